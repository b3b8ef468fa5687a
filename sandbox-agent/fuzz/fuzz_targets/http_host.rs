//! `parse_http_host` on arbitrary bytes: no panic, and an answer once given does not change
//! when more bytes arrive (the proxy decides on the first answer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandbox_agent::proxy::detect::{HttpHost, parse_http_host};

fuzz_target!(|data: &[u8]| {
    let answer = parse_http_host(data);
    if answer != HttpHost::Incomplete {
        let mut longer = data.to_vec();
        longer.extend_from_slice(data);
        assert_eq!(parse_http_host(&longer), answer, "more bytes changed the answer");
    }
    // The same property seen from one byte earlier.
    if let Some((_, shorter)) = data.split_last() {
        let earlier = parse_http_host(shorter);
        assert!(
            earlier == HttpHost::Incomplete || earlier == answer,
            "one byte more changed {earlier:?} into {answer:?}"
        );
    }
});
