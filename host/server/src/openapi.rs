//! The OpenAPI 3.1 document of the API, built from [`crate::ROUTES`]; the
//! same text is committed as `docs/openapi.json` (a test keeps them equal).

use serde_json::{Map, Value, json};

use crate::routes::{Access, ROUTES};

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for r in ROUTES {
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let mut op = json!({
            "summary": r.summary,
            "operationId": operation_id(r.method, r.path),
            "responses": responses(r.access),
        });
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        op["security"] = match r.access {
            Access::Public => json!([]),
            Access::Token(scope) => json!([{ "bearer": [format!("{scope:?}").to_lowercase()] }]),
        };
        let entry = paths
            .entry(r.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[r.method.to_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Sentinel server API",
            "version": "v1",
            "description": "The HTTP API of `sentinel serve`. Bearer tokens (`sentinel token create`) with scopes read < trigger < admin. Errors are `{\"error\": \"…\"}`. Run and stage documents are those of docs/results-layout.md."
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" }
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": { "error": { "type": "string" } }
                }
            }
        },
        "paths": paths,
    })
}

fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_lowercase();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        let seg = seg.trim_start_matches('{').trim_end_matches('}');
        for part in seg.split(|c: char| !c.is_ascii_alphanumeric()) {
            let mut cs = part.chars();
            if let Some(first) = cs.next() {
                id.push(first.to_ascii_uppercase());
                id.extend(cs);
            }
        }
    }
    id
}

fn responses(access: Access) -> Value {
    let error = json!({ "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
    let mut r = json!({ "2XX": { "description": "success" } });
    let mut add = |code: &str, what: &str| {
        let mut e = error.clone();
        e["description"] = json!(what);
        r[code] = e;
    };
    add("400", "a bad request (the message says what)");
    add("404", "not found");
    if let Access::Token(_) = access {
        add("401", "no valid token");
        add("403", "the token's scope is too small");
        add("429", "over the token's rate limit");
    } else {
        add("401", "a webhook whose signature does not match");
    }
    r
}
