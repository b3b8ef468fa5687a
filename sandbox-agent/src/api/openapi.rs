//! The OpenAPI document served at `/openapi.json`.

/// OpenAPI 3.0 description of the API.
pub const DOCUMENT: &str = r#"{"openapi":"3.0.3","info":{"title":"sandbox-agent","version":"1"},"paths":{}}"#;

#[cfg(test)]
mod tests {
    #[test]
    fn document_is_json() {
        let v: serde_json::Value = serde_json::from_str(super::DOCUMENT).unwrap();
        assert_eq!(v["openapi"], "3.0.3");
    }
}
