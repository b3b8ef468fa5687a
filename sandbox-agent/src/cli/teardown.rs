use sandbox_agent::{enforcement, paths::Paths};

pub fn main() -> i32 {
    match enforcement::teardown(&Paths::default()) {
        Ok(()) => 0,
        Err(e) => super::fail(&e),
    }
}
