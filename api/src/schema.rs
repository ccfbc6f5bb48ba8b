//! The OpenAPI document as a node serves it: utoipa's document from the
//! handlers' annotations ([`crate::ApiDoc`]), refined with every constraint
//! the server checks, taken from [`crate::rules`] (the same values the
//! handlers check with) and from the node's own limits (largest replication
//! factor, largest object), and with the statuses every kind of input can
//! earn (400 for a parameter with a rule, 400/413/415 for a JSON body).
//!
//! Every parameter of every route must have a rule here: a unit test fails
//! the build when a route gains a parameter that has none.

use serde_json::{json, Map, Value};
use utoipa::OpenApi;

use crate::rules::{self, Charset, IntRule, TextRule};
use plexi_util::types::Consistency;

/// What the document states that depends on the node's configuration.
#[derive(Clone, Copy, Debug)]
pub struct DocLimits {
    pub max_replication_factor: u32,
    pub max_object_bytes: usize,
}

/// One input's constraint, as a JSON Schema.
enum Rule {
    Text(TextRule),
    Int(IntRule),
    OneOf(&'static [&'static str]),
}

impl Rule {
    fn schema(&self) -> Value {
        match self {
            Rule::Text(r) => text_schema(r),
            Rule::Int(r) => json!({
                "type": "integer", "format": "int64", "minimum": r.min, "maximum": r.max
            }),
            Rule::OneOf(names) => json!({ "type": "string", "enum": names }),
        }
    }
}

fn text_schema(r: &TextRule) -> Value {
    let mut s = json!({
        "type": "string",
        "minLength": r.min_chars,
        "maxLength": r.max_chars,
        "pattern": r.charset.pattern(),
    });
    if !r.forbidden.is_empty() {
        s["not"] = json!({ "enum": r.forbidden });
    }
    if r.charset == Charset::SemVer {
        s["description"] = json!("A semantic version, e.g. 1.2.3 or 1.3.0-rc.1");
    }
    s
}

/// Every query or path parameter's rule, by route and name.
fn param_rule(path: &str, name: &str, limits: &DocLimits) -> Option<Rule> {
    Some(match name {
        "data_id" => Rule::Text(rules::DATA_ID),
        "operation_id" => Rule::Text(rules::OPERATION_ID),
        "job_id" => Rule::Text(rules::JOB_ID),
        "node_id" => Rule::Text(rules::NODE_ID),
        "data_type" => Rule::Text(rules::DATA_TYPE),
        "consistency" => Rule::OneOf(Consistency::NAMES),
        "replication_factor" => {
            Rule::Int(rules::REPLICATION_FACTOR.up_to(u64::from(limits.max_replication_factor)))
        }
        "prefix" | "after" => Rule::Text(rules::LIST_PREFIX),
        "ticket" => Rule::Text(rules::TICKET),
        "limit" if path.ends_with("/storage/data") => Rule::Int(rules::LIST_LIMIT),
        "limit" if path.ends_with("/clustering/alerts") => Rule::Int(rules::ALERTS_LIMIT),
        "limit" if path.ends_with("/updates/history") => Rule::Int(rules::HISTORY_LIMIT),
        "limit" if path.ends_with("/audit") => Rule::Int(rules::AUDIT_LIMIT),
        _ => return None,
    })
}

/// Every constrained property of a request body schema, by schema and property.
fn property_rule(schema: &str, property: &str) -> Option<Rule> {
    const HEX_KEY: TextRule = TextRule {
        name: "public_key",
        code: "invalid_release",
        min_chars: 64,
        max_chars: 64,
        charset: Charset::Hex,
        forbidden: &[],
    };
    const HEX_SIGNATURE: TextRule = TextRule {
        name: "signature",
        code: "invalid_release",
        min_chars: 128,
        max_chars: 128,
        charset: Charset::Hex,
        forbidden: &[],
    };
    const HEX_HASH: TextRule = TextRule {
        name: "blake3",
        ..HEX_KEY
    };
    Some(match (schema, property) {
        ("PlanRequest", "target_version") => Rule::Text(rules::VERSION),
        ("MaintenanceRequest", "reason") => Rule::Text(rules::REASON),
        ("MaintenanceRequest", "timeout_seconds") => Rule::Int(rules::MAINTENANCE_TIMEOUT),
        ("SignedRelease", "public_key") => Rule::Text(HEX_KEY),
        ("SignedRelease", "signature") => Rule::Text(HEX_SIGNATURE),
        ("ReleaseManifest", "version") => Rule::Text(rules::VERSION),
        ("ReleaseManifest", "min_compatible_version") => Rule::Text(rules::VERSION),
        ("ReleaseManifest", "blake3") => Rule::Text(HEX_HASH),
        _ => return None,
    })
}

/// The document this node serves.
pub fn document(limits: &DocLimits) -> Value {
    let mut doc = serde_json::to_value(crate::ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    refine(&mut doc, limits);
    doc
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } }
    })
}

fn add_response(op: &mut Value, status: &str, description: &str) {
    let responses = &mut op["responses"];
    if !responses.is_object() {
        *responses = json!({});
    }
    if responses.get(status).is_none() {
        responses[status] = error_response(description);
    }
}

/// Applies the rules to `doc`'s parameters and request bodies and adds the
/// statuses they imply.
pub fn refine(doc: &mut Value, limits: &DocLimits) {
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (_method, op) in item.iter_mut() {
                refine_operation(path, op, limits);
            }
        }
    }
    refine_bodies(doc, limits);
}

fn refine_operation(path: &str, op: &mut Value, limits: &DocLimits) {
    let mut constrained = false;
    if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
        for p in params.iter_mut() {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            if let Some(rule) = param_rule(path, &name, limits) {
                p["schema"] = rule.schema();
                constrained = true;
            }
        }
    }
    if constrained {
        add_response(
            op,
            "400",
            "A parameter breaks its schema (invalid_path, invalid_query or the parameter's own code)",
        );
    }
    let json_body = op
        .pointer("/requestBody/content/application~1json")
        .is_some();
    if json_body {
        add_response(
            op,
            "400",
            "The body is not valid JSON of the schema, or breaks a constraint",
        );
        add_response(op, "413", "The body is larger than 1 MiB");
        add_response(op, "415", "The body is not sent as application/json");
    }
    if path.ends_with("/storage/data/{data_id}") {
        if let Some(body) = op.pointer_mut("/requestBody") {
            body["description"] = json!(format!(
                "The object's bytes, at most {} bytes",
                limits.max_object_bytes
            ));
            body["x-max-bytes"] = json!(limits.max_object_bytes);
        }
    }
}

fn refine_bodies(doc: &mut Value, _limits: &DocLimits) {
    let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for (name, schema) in schemas.iter_mut() {
        let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
            continue;
        };
        for (prop, s) in props.iter_mut() {
            if let Some(rule) = property_rule(name, prop) {
                *s = merge_nullable(s, rule.schema());
            }
            if (name.as_str(), prop.as_str()) == ("PlanRequest", "target_nodes") {
                s["items"] = text_schema(&rules::TARGET_NODE);
            }
        }
    }
}

/// `rule`, still allowing `null` where `old` did (an `Option` field).
fn merge_nullable(old: &Value, mut rule: Value) -> Value {
    let nullable = match &old["type"] {
        Value::Array(types) => types.iter().any(|t| t == "null"),
        _ => false,
    } || old
        .get("oneOf")
        .and_then(Value::as_array)
        .is_some_and(|v| v.iter().any(|t| t["type"] == "null"));
    if nullable {
        rule["type"] = json!([rule["type"].clone(), "null"]);
    }
    if let Some(d) = old.get("description") {
        rule.as_object_mut()
            .map(|m: &mut Map<String, Value>| m.insert("description".into(), d.clone()));
    }
    rule
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DocLimits = DocLimits {
        max_replication_factor: 5,
        max_object_bytes: 1 << 20,
    };

    #[test]
    fn every_parameter_of_every_route_has_a_rule() {
        let doc = serde_json::to_value(crate::ApiDoc::openapi()).unwrap();
        let mut missing = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for p in op["parameters"].as_array().into_iter().flatten() {
                    let name = p["name"].as_str().unwrap();
                    if param_rule(path, name, &LIMITS).is_none() {
                        missing.push(format!("{method} {path} {name}"));
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "parameters without a rule in api/src/schema.rs: {missing:?}"
        );
    }

    #[test]
    fn the_served_document_carries_the_node_limits() {
        let doc = document(&LIMITS);
        let put = &doc["paths"]["/api/v1/clustering/storage/data/{data_id}"]["put"];
        let rf = put["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "replication_factor")
            .unwrap();
        assert_eq!(rf["schema"]["maximum"], 5);
        assert_eq!(put["requestBody"]["x-max-bytes"], 1 << 20);
        let plan = &doc["components"]["schemas"]["PlanRequest"]["properties"];
        assert_eq!(plan["target_version"]["pattern"], Charset::SemVer.pattern());
        assert!(
            doc["paths"]["/api/v1/clustering/maintenance"]["post"]["responses"]["415"].is_object()
        );
    }
}
