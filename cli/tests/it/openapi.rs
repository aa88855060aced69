//! Every JSON answer the API tests receive is checked against the API's own `/openapi.json`
//! (derived from the answer types with utoipa): the path and method must be documented, the
//! status must be one of that operation's documented answers, and the body must validate
//! against its schema. An undocumented field type, a missing field, or an undocumented status
//! fails the test that met it.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The document of each API (by host:port), fetched once.
fn document(host: &str) -> Value {
    static DOCS: OnceLock<Mutex<HashMap<String, Value>>> = OnceLock::new();
    let docs = DOCS.get_or_init(Default::default);
    if let Some(d) = docs.lock().unwrap().get(host) {
        return d.clone();
    }
    let (status, body) =
        crate::util::http("GET", &format!("http://{host}/openapi.json"), &[], b"").unwrap();
    assert_eq!(status, 200, "GET /openapi.json");
    let d: Value = serde_json::from_slice(&body).unwrap();
    docs.lock().unwrap().insert(host.to_string(), d.clone());
    d
}

/// The documented path template that `path` (no query) matches: `{name}` matches a segment.
fn template<'a>(doc: &'a Value, path: &str) -> Option<&'a str> {
    let segs: Vec<&str> = path.split('/').collect();
    doc["paths"].as_object()?.keys().map(String::as_str).find(|t| {
        let ts: Vec<&str> = t.split('/').collect();
        ts.len() == segs.len()
            && ts.iter().zip(&segs).all(|(t, s)| (t.starts_with('{') && !s.is_empty()) || t == s)
    })
}

/// Checks one answer of the API at `url` (panics with what does not match).
pub(crate) fn check(method: &str, url: &str, status: u16, body: &Value) {
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = path.split('?').next().unwrap_or("/");
    if path == "/openapi.json" {
        return;
    }
    let doc = document(host);
    let (t, schema) = match template(&doc, path) {
        Some(t) => {
            let op = &doc["paths"][t][method.to_lowercase()];
            assert!(op.is_object(), "{method} {t} is not in /openapi.json");
            let answer = &op["responses"][status.to_string()];
            assert!(
                answer.is_object(),
                "{method} {t} answered {status}, which /openapi.json does not document: {body}"
            );
            let Some(schema) = answer["content"]["application/json"].get("schema") else {
                panic!("{method} {t} {status} documents no JSON schema: {body}");
            };
            (t, schema.clone())
        }
        // A path the API does not have: a 404 with the API's error body.
        None => {
            assert_eq!(
                status, 404,
                "{path} is not in /openapi.json, yet answered {status}: {body}"
            );
            (path, json!({"$ref": "#/components/schemas/ErrorBody"}))
        }
    };
    // The schema with the document's components beside it, so `$ref`s resolve.
    let root = json!({"allOf": [schema], "components": doc["components"]});
    let v = jsonschema::validator_for(&root)
        .unwrap_or_else(|e| panic!("schema of {method} {t} {status}: {e}"));
    let errors: Vec<String> =
        v.iter_errors(body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(
        errors.is_empty(),
        "{method} {url} {status} does not match /openapi.json:\n  {}\nbody: {body}",
        errors.join("\n  ")
    );
}
