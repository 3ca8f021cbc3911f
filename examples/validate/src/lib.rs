//! Validates an order, `{"email": "...", "quantity": n}`, and returns it normalised, or fails
//! permanently with a code that says what is wrong: `missing-field`, `invalid-email`,
//! `quantity-out-of-range`, or `invalid-payload` when a field has the wrong JSON type.
//!
//! Validation errors are permanent because the same order fails the same way on every attempt.

use std::ops::RangeInclusive;

use wasm_runner_guest::serde::{Deserialize, Serialize};
use wasm_runner_guest::{Context, TaskError, export_json_task, log};

/// Quantities the (imaginary) shop accepts per order.
const QUANTITY_RANGE: RangeInclusive<i64> = 1..=1000;

// Both fields are optional here so that a missing one gets its own code instead of serde's
// generic `invalid-payload`.
#[derive(Debug, Default, Deserialize)]
#[serde(crate = "wasm_runner_guest::serde")]
struct Order {
    email: Option<String>,
    quantity: Option<i64>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(crate = "wasm_runner_guest::serde")]
struct ValidOrder {
    email: String,
    quantity: i64,
}

fn validate(_ctx: &Context, order: Order) -> Result<ValidOrder, TaskError> {
    let Some(email) = order.email else {
        return Err(missing("email"));
    };
    let Some(quantity) = order.quantity else {
        return Err(missing("quantity"));
    };

    let email = normalise_email(&email).map_err(|reason| {
        TaskError::permanent(format!("`email` is not a valid address: {reason}"))
            .code("invalid-email")
    })?;
    if !QUANTITY_RANGE.contains(&quantity) {
        let message = format!(
            "`quantity` must be between {} and {}, got {quantity}",
            QUANTITY_RANGE.start(),
            QUANTITY_RANGE.end()
        );
        return Err(TaskError::permanent(message).code("quantity-out-of-range"));
    }

    log::debug_with("order is valid", &[("quantity", &quantity)]);
    Ok(ValidOrder { email, quantity })
}

fn missing(field: &str) -> TaskError {
    TaskError::permanent(format!("`{field}` is required")).code("missing-field")
}

/// Checks the shape of an address and returns it trimmed, with its domain lowercased.
///
/// This is a deliberately small check, not RFC 5322: one `@`, a local part without spaces, and
/// a domain of at least two dot-separated ASCII labels. The local part keeps its case because
/// mail servers may treat it as case-sensitive; domains never are.
fn normalise_email(raw: &str) -> Result<String, &'static str> {
    let email = raw.trim();
    if email.is_empty() {
        return Err("it is empty");
    }
    // 254 is the longest address that fits in an SMTP path.
    if email.len() > 254 {
        return Err("it is longer than 254 bytes");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("it has no `@`");
    };
    if domain.contains('@') {
        return Err("it has more than one `@`");
    }
    if local.is_empty() || local.len() > 64 {
        return Err("the part before `@` must be 1 to 64 bytes");
    }
    if local.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the part before `@` contains spaces or control characters");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 || !labels.iter().all(|label| is_domain_label(label)) {
        return Err("the domain must be dot-separated labels of letters, digits and `-`");
    }
    Ok(format!("{local}@{}", domain.to_ascii_lowercase()))
}

fn is_domain_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

export_json_task!(validate);

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            job_id: "job-1".into(),
            attempt: 1,
            max_attempts: 3,
            task_name: "validate".into(),
            tenant: "default".into(),
        }
    }

    fn order(email: Option<&str>, quantity: Option<i64>) -> Order {
        Order {
            email: email.map(str::to_owned),
            quantity,
        }
    }

    fn code_of(order: Order) -> Option<String> {
        let err = validate(&ctx(), order).unwrap_err();
        assert!(err.is_permanent());
        err.error_code().map(str::to_owned)
    }

    #[test]
    fn normalises_valid_order() {
        let valid = validate(&ctx(), order(Some("  Ada@Example.COM "), Some(3))).unwrap();
        assert_eq!(
            valid,
            ValidOrder {
                email: "Ada@example.com".into(),
                quantity: 3
            }
        );
    }

    #[test]
    fn missing_fields_have_their_own_code() {
        assert_eq!(
            code_of(order(None, Some(1))).as_deref(),
            Some("missing-field")
        );
        assert_eq!(
            code_of(order(Some("a@b.c"), None)).as_deref(),
            Some("missing-field")
        );
    }

    #[test]
    fn rejects_malformed_emails() {
        for email in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "a@b@c.com",
            "a b@c.com",
            "a@example",
        ] {
            assert_eq!(
                code_of(order(Some(email), Some(1))).as_deref(),
                Some("invalid-email"),
                "{email:?}"
            );
        }
        assert!(normalise_email("a@-bad.com").is_err());
        assert!(normalise_email("a@exa_mple.com").is_err());
    }

    #[test]
    fn quantity_must_be_in_range() {
        for quantity in [0, -1, 1001] {
            assert_eq!(
                code_of(order(Some("a@b.co"), Some(quantity))).as_deref(),
                Some("quantity-out-of-range")
            );
        }
        assert!(validate(&ctx(), order(Some("a@b.co"), Some(1000))).is_ok());
    }
}
