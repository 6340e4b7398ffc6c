//! docs/openapi.json and the router describe the same API: every route in
//! `host_broker::api::routes::ROUTES` is in the document and vice versa; every `$ref` in the
//! document resolves.

use std::collections::BTreeSet;

use host_broker::api::routes::{match_route, ROUTES};

fn doc() -> serde_json::Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn router_and_document_match() {
    let doc = doc();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (k, _) in item.as_object().unwrap() {
            if ["get", "put", "post", "delete", "patch", "head", "options"].contains(&k.as_str()) {
                documented.insert((k.to_uppercase(), path.clone()));
            }
        }
    }
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented.difference(&routed).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not routed"
    );
    assert_eq!(
        routed.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routed but not documented"
    );
    // And the router really dispatches each documented route.
    for (m, p) in &documented {
        let concrete = p.replace("{id}", "vm1");
        assert!(match_route(m, &concrete).is_ok(), "{m} {p}");
    }
}

#[test]
fn every_ref_resolves() {
    let doc = doc();
    fn walk(v: &serde_json::Value, doc: &serde_json::Value, n: &mut usize) {
        match v {
            serde_json::Value::Object(o) => {
                if let Some(r) = o.get("$ref").and_then(|r| r.as_str()) {
                    let ptr = r.strip_prefix('#').expect("local refs only");
                    assert!(doc.pointer(ptr).is_some(), "unresolved {r}");
                    *n += 1;
                }
                o.values().for_each(|x| walk(x, doc, n));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, doc, n)),
            _ => {}
        }
    }
    let mut n = 0;
    walk(&doc, &doc, &mut n);
    assert!(n > 10);
}
