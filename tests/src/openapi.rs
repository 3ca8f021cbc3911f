//! Just enough of OpenAPI 3 to check the API against `docs/openapi.json`: its operations, the
//! statuses each declares, and a small JSON-schema validator for response bodies.
//!
//! The validator knows `type` (one or a list, with `"null"`, and OpenAPI 3.0's `nullable`),
//! `required`, `properties`, `items`, `prefixItems`, `minItems`, `maxItems`, `minimum`,
//! `maximum`, `enum`, `const`, `allOf`, `anyOf`, `oneOf` and `$ref` to `#/components/...`. It
//! ignores `additionalProperties`, `pattern`, `format` and every other keyword, so it is never
//! stricter than the document, only sometimes more lenient.

use std::collections::BTreeSet;

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;

/// The HTTP methods OpenAPI allows as keys of a path item.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// How deep `$ref`s may nest before the document is taken to be cyclic without end.
const MAX_DEPTH: usize = 64;

/// A parsed OpenAPI document.
#[derive(Debug, Clone)]
pub struct OpenApi {
    doc: Value,
}

impl OpenApi {
    /// Reads and parses the document at `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be read, is not JSON, or has no `paths` object.
    pub fn load(path: &str) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
        let doc: Value =
            serde_json::from_str(&text).with_context(|| format!("{path} is not JSON"))?;
        OpenApi::from_value(doc)
    }

    /// The document in `doc`.
    ///
    /// # Errors
    ///
    /// When it has no `paths` object.
    pub fn from_value(doc: Value) -> anyhow::Result<Self> {
        if !doc["paths"].is_object() {
            bail!("the OpenAPI document has no `paths` object");
        }
        Ok(OpenApi { doc })
    }

    /// The document as parsed.
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// Every operation as (upper-case method, path template).
    pub fn operations(&self) -> BTreeSet<(String, String)> {
        let mut operations = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().into_iter().flatten() {
            for method in METHODS {
                if item.get(method).is_some() {
                    operations.insert((method.to_ascii_uppercase(), path.clone()));
                }
            }
        }
        operations
    }

    /// The operation object of `method` on `path` (a template as written in the document).
    ///
    /// # Errors
    ///
    /// When the document has no such operation.
    pub fn operation(&self, method: &str, path: &str) -> anyhow::Result<&Value> {
        self.doc["paths"]
            .get(path)
            .and_then(|item| item.get(method.to_ascii_lowercase()))
            .with_context(|| format!("the document has no operation {method} {path}"))
    }

    /// The response object declared for `status` by the operation, following a `$ref` to
    /// `#/components/responses/...`; a range (`4XX`) or `default` applies when the exact
    /// status is not listed.
    ///
    /// # Errors
    ///
    /// When the status is not declared, or a reference does not resolve.
    pub fn response(&self, method: &str, path: &str, status: u16) -> anyhow::Result<&Value> {
        let responses = &self.operation(method, path)?["responses"];
        let exact = status.to_string();
        let range = format!("{}XX", status / 100);
        let declared = responses
            .get(&exact)
            .or_else(|| responses.get(&range))
            .or_else(|| responses.get(range.to_ascii_lowercase()))
            .or_else(|| responses.get("default"))
            .with_context(|| {
                let listed: Vec<&String> = responses
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                    .collect();
                format!("{method} {path} does not declare status {status}; it lists {listed:?}")
            })?;
        self.resolve(declared, 0)
    }

    /// Checks `body` against the JSON schema the operation declares for `status`. A response
    /// declared without an `application/json` schema accepts any body.
    ///
    /// # Errors
    ///
    /// When the status is not declared, or the body does not match; the message gives the
    /// JSON path of the first mismatch.
    pub fn check_response(
        &self,
        method: &str,
        path: &str,
        status: u16,
        body: &Value,
    ) -> anyhow::Result<()> {
        let response = self.response(method, path, status)?;
        let Some(schema) = response
            .get("content")
            .and_then(|content| content.get("application/json"))
            .and_then(|media| media.get("schema"))
        else {
            return Ok(());
        };
        self.validate(schema, body)
            .with_context(|| format!("{method} {path} answered {status} with {body}"))
    }

    /// Checks `value` against `schema`, resolving references in this document.
    ///
    /// # Errors
    ///
    /// The JSON path and reason of the first mismatch, or a reference that does not resolve.
    pub fn validate(&self, schema: &Value, value: &Value) -> anyhow::Result<()> {
        self.check(schema, value, "$", 0)
    }

    /// Follows `$ref`s (to `#/...` in this document) until an object without one.
    fn resolve<'a>(&'a self, mut node: &'a Value, depth: usize) -> anyhow::Result<&'a Value> {
        let mut hops = depth;
        while let Some(reference) = node.get("$ref").and_then(Value::as_str) {
            hops += 1;
            if hops > MAX_DEPTH {
                bail!("`$ref` {reference} nests deeper than {MAX_DEPTH}");
            }
            let pointer = reference
                .strip_prefix('#')
                .with_context(|| format!("only local references are supported, not {reference}"))?;
            node = self
                .doc
                .pointer(pointer)
                .with_context(|| format!("`$ref` {reference} does not resolve"))?;
        }
        Ok(node)
    }

    fn check(&self, schema: &Value, value: &Value, at: &str, depth: usize) -> anyhow::Result<()> {
        if depth > MAX_DEPTH {
            bail!("{at}: the schema nests deeper than {MAX_DEPTH}");
        }
        let schema = self.resolve(schema, depth)?;
        // `true`/`{}` accept anything; `false` nothing.
        match schema {
            Value::Bool(true) => return Ok(()),
            Value::Bool(false) => bail!("{at}: the schema accepts nothing"),
            Value::Object(_) => {}
            other => bail!("{at}: not a schema: {other}"),
        }

        if value.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
            return Ok(());
        }
        if let Some(types) = schema.get("type") {
            let names: Vec<&str> = match types {
                Value::String(name) => vec![name.as_str()],
                Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
                other => bail!("{at}: malformed `type` {other}"),
            };
            if !names.iter().any(|name| has_type(value, name)) {
                bail!("{at}: {value} is not of type {}", names.join(" or "));
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            bail!(
                "{at}: {value} is not one of {}",
                Value::Array(allowed.clone())
            );
        }
        if let Some(constant) = schema.get("const")
            && constant != value
        {
            bail!("{at}: {value} is not {constant}");
        }

        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for part in all {
                self.check(part, value, at, depth + 1)?;
            }
        }
        if let Some(any) = schema.get("anyOf").and_then(Value::as_array)
            && !any
                .iter()
                .any(|part| self.check(part, value, at, depth + 1).is_ok())
        {
            bail!("{at}: {value} matches none of the `anyOf` schemas");
        }
        if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
            let matching = one
                .iter()
                .filter(|part| self.check(part, value, at, depth + 1).is_ok())
                .count();
            if matching != 1 {
                bail!("{at}: {value} matches {matching} of the `oneOf` schemas, not exactly 1");
            }
        }

        if let Value::Object(object) = value {
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !object.contains_key(name) {
                    bail!("{at}: the required property `{name}` is missing");
                }
            }
            if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
                for (name, property) in properties {
                    if let Some(field) = object.get(name) {
                        self.check(property, field, &format!("{at}.{name}"), depth + 1)?;
                    }
                }
            }
        }
        if let Value::Array(items) = value {
            let count = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && count < min
            {
                bail!("{at}: {count} items, fewer than {min}");
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && count > max
            {
                bail!("{at}: {count} items, more than {max}");
            }
            // `prefixItems` checks the first items by position; `items` the ones after them.
            let prefix = schema
                .get("prefixItems")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            for (index, item) in items.iter().enumerate() {
                let item_schema = match prefix.get(index) {
                    Some(positional) => Some(positional),
                    None => schema.get("items"),
                };
                if let Some(item_schema) = item_schema {
                    self.check(item_schema, item, &format!("{at}[{index}]"), depth + 1)?;
                }
            }
        }
        if let Some(number) = value.as_f64() {
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && number < min
            {
                bail!("{at}: {value} is under the minimum {min}");
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && number > max
            {
                bail!("{at}: {value} is over the maximum {max}");
            }
        }
        Ok(())
    }
}

/// Whether `value` is of JSON-schema type `name`.
fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

/// Fills a path template's `{name}` parameters from `values` (name, value).
///
/// # Errors
///
/// When the template has a parameter `values` does not give.
pub fn fill_template(template: &str, values: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map(|end| start + end)
            .ok_or_else(|| anyhow!("unclosed `{{` in {template}"))?;
        let name = &rest[start + 1..end];
        let value = values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .with_context(|| format!("no value for `{{{name}}}` in {template}"))?;
        out.push_str(value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc() -> OpenApi {
        OpenApi::from_value(json!({
            "openapi": "3.1.0",
            "paths": {
                "/v1/jobs/{id}": {
                    "get": {"responses": {
                        "200": {"description": "ok", "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Job"}}}},
                        "4XX": {"$ref": "#/components/responses/Error"}
                    }},
                    "parameters": []
                }
            },
            "components": {
                "schemas": {
                    "Job": {
                        "type": "object",
                        "required": ["id", "state"],
                        "properties": {
                            "id": {"type": "string"},
                            "state": {"enum": ["queued", "failed"]},
                            "result": {"type": ["string", "null"]},
                            "attempts": {"type": "array", "items": {"type": "integer"}},
                            "pair": {"type": "array", "minItems": 2, "maxItems": 2,
                                     "prefixItems": [{"type": "string"},
                                                     {"type": "integer", "minimum": 0}],
                                     "items": {"type": ["string", "integer"]}},
                            "outcome": {"type": "object", "nullable": true}
                        }
                    },
                    "Error": {"type": "object", "required": ["error", "status"]}
                },
                "responses": {"Error": {"description": "error", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}
            }
        }))
        .unwrap()
    }

    #[test]
    fn operations_skip_non_method_keys() {
        let operations = doc().operations();
        assert_eq!(
            operations.into_iter().collect::<Vec<_>>(),
            [("GET".to_owned(), "/v1/jobs/{id}".to_owned())]
        );
    }

    #[test]
    fn valid_bodies_pass_and_each_kind_of_mismatch_is_named() {
        let api = doc();
        let ok = json!({"id": "a", "state": "queued", "result": null, "attempts": [1, 2],
                        "outcome": null, "pair": ["a", 0], "extra": true});
        api.check_response("GET", "/v1/jobs/{id}", 200, &ok)
            .unwrap();

        let cases = [
            (json!({"state": "queued"}), "`id` is missing"),
            (json!({"id": 1, "state": "queued"}), "$.id"),
            (json!({"id": "a", "state": "done"}), "not one of"),
            (
                json!({"id": "a", "state": "queued", "attempts": [1.5]}),
                "$.attempts[0]",
            ),
            (
                json!({"id": "a", "state": "queued", "result": 3}),
                "$.result",
            ),
            (
                json!({"id": "a", "state": "queued", "pair": ["a"]}),
                "fewer than 2",
            ),
            (
                json!({"id": "a", "state": "queued", "pair": ["a", 1, 2]}),
                "more than 2",
            ),
            (
                json!({"id": "a", "state": "queued", "pair": [1, 1]}),
                "$.pair[0]",
            ),
            (
                json!({"id": "a", "state": "queued", "pair": ["a", -1]}),
                "under the minimum",
            ),
        ];
        for (body, needle) in cases {
            let err = format!(
                "{:#}",
                api.check_response("GET", "/v1/jobs/{id}", 200, &body)
                    .unwrap_err()
            );
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }

    #[test]
    fn statuses_fall_back_to_ranges_and_undeclared_ones_are_refused() {
        let api = doc();
        let error = json!({"error": "no", "status": 404});
        api.check_response("GET", "/v1/jobs/{id}", 404, &error)
            .unwrap();
        assert!(
            api.check_response("GET", "/v1/jobs/{id}", 404, &json!({}))
                .is_err()
        );
        let err = api
            .check_response("GET", "/v1/jobs/{id}", 500, &error)
            .unwrap_err();
        assert!(
            err.to_string().contains("does not declare status 500"),
            "{err}"
        );
    }

    #[test]
    fn templates_are_filled_and_missing_values_refused() {
        let filled = fill_template("/q/{queue}/jobs/{id}", &[("queue", "a"), ("id", "7")]);
        assert_eq!(filled.unwrap(), "/q/a/jobs/7");
        assert!(fill_template("/q/{queue}", &[]).is_err());
    }
}
