//! Reading the values clients send as text (`30s`, `64MiB`, `exponential:base=1s`, `20%`),
//! shared by the task upload's query string and the enqueue body.
//!
//! The parsers are the CLI's (`config`, `scheduler`); what is here names the offending field
//! the way the client wrote it, so a 422 says which parameter to fix.

use std::time::Duration;

use super::error::ApiError;
use crate::config::{parse_duration, parse_size};
use crate::scheduler::{Backoff, RetryPolicy, parse_jitter};

/// Parses duration `field` (e.g. `30s`).
pub(crate) fn duration(field: &str, text: &str) -> Result<Duration, ApiError> {
    parse_duration(text).map_err(|msg| ApiError::invalid(format!("`{field}`: {msg}")))
}

/// Parses size `field` (e.g. `64MiB`).
pub(crate) fn size(field: &str, text: &str) -> Result<u64, ApiError> {
    parse_size(text).map_err(|msg| ApiError::invalid(format!("`{field}`: {msg}")))
}

/// Parses a whole number `field` given as text (query parameters are all text).
pub(crate) fn number<T: std::str::FromStr>(field: &str, text: &str) -> Result<T, ApiError> {
    text.trim().parse().map_err(|_| {
        ApiError::invalid(format!(
            "`{field}` is `{text}`, which is not a whole number; write e.g. `{field}=3`"
        ))
    })
}

/// Parses boolean `field` given as text: `true` or `false`.
pub(crate) fn boolean(field: &str, text: &str) -> Result<bool, ApiError> {
    match text.trim() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::invalid(format!(
            "`{field}` is `{text}`; write `{field}=true` or `{field}=false`"
        ))),
    }
}

/// Retry-policy overrides as a client sends them; each one left out keeps the base's value.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PolicyParams<'a> {
    /// The most attempts a job gets, including the first.
    pub(crate) max_attempts: Option<u32>,
    /// Fixed delays before each retry, e.g. `1s,2s`; the last one repeats.
    pub(crate) intervals: Option<&'a str>,
    /// A backoff in the CLI's syntax, e.g. `exponential:base=1s,factor=2,max=10m`.
    pub(crate) backoff: Option<&'a str>,
    /// How far each delay is spread at random, e.g. `20%`.
    pub(crate) jitter: Option<&'a str>,
}

impl PolicyParams<'_> {
    /// Whether any override was given.
    pub(crate) fn is_empty(&self) -> bool {
        self.max_attempts.is_none()
            && self.intervals.is_none()
            && self.backoff.is_none()
            && self.jitter.is_none()
    }

    /// `base` with the overrides applied, validated.
    ///
    /// # Errors
    ///
    /// 422 naming the field when an override does not parse or the policy is out of range.
    pub(crate) fn apply(&self, base: RetryPolicy) -> Result<RetryPolicy, ApiError> {
        let invalid = |field: &str, msg: String| ApiError::invalid(format!("`{field}`: {msg}"));

        let mut builder = RetryPolicy::builder()
            .max_attempts(self.max_attempts.unwrap_or(base.max_attempts))
            .backoff(base.backoff)
            .jitter_percent(base.jitter_percent)
            .hint_ceiling(base.hint_ceiling);
        match (self.intervals, self.backoff) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "`intervals` and `backoff` both set the delays between retries; give only \
                     one of them",
                ));
            }
            (Some(list), None) => {
                if list.trim().is_empty() {
                    return Err(invalid(
                        "intervals",
                        "the list is empty; give at least one delay, e.g. `1s,2s`".to_owned(),
                    ));
                }
                // Only the other syntax has a `kind:` prefix; point the client at it.
                if list.contains(':') {
                    return Err(invalid(
                        "intervals",
                        format!(
                            "`{list}` is not a list of delays; for exponential backoff set \
                             `backoff` instead"
                        ),
                    ));
                }
                builder =
                    builder.backoff(Backoff::parse(list).map_err(|m| invalid("intervals", m))?);
            }
            (None, Some(spec)) => {
                builder = builder.backoff(Backoff::parse(spec).map_err(|m| invalid("backoff", m))?);
            }
            (None, None) => {}
        }
        if let Some(jitter) = self.jitter {
            builder =
                builder.jitter_percent(parse_jitter(jitter).map_err(|m| invalid("jitter", m))?);
        }

        builder.build().map_err(ApiError::invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn overrides_replace_only_what_they_name() {
        let policy = PolicyParams {
            max_attempts: Some(5),
            ..PolicyParams::default()
        }
        .apply(RetryPolicy::default())
        .unwrap();
        assert_eq!(policy.max_attempts, 5);
        assert_eq!(policy.backoff, RetryPolicy::default().backoff);

        let policy = PolicyParams {
            intervals: Some("1s,2s"),
            jitter: Some("0%"),
            ..PolicyParams::default()
        }
        .apply(RetryPolicy::default())
        .unwrap();
        assert_eq!(
            policy.backoff,
            Backoff::Intervals(vec![Duration::from_secs(1), Duration::from_secs(2)])
        );
        assert_eq!(policy.jitter_percent, 0);
        assert_eq!(policy.max_attempts, RetryPolicy::default().max_attempts);
    }

    #[test]
    fn bad_overrides_are_422_naming_the_field() {
        let cases = [
            (
                PolicyParams {
                    max_attempts: Some(0),
                    ..Default::default()
                },
                "max attempts",
            ),
            (
                PolicyParams {
                    intervals: Some(" "),
                    ..Default::default()
                },
                "`intervals`",
            ),
            (
                PolicyParams {
                    intervals: Some("exponential:base=1s"),
                    ..Default::default()
                },
                "`backoff`",
            ),
            (
                PolicyParams {
                    backoff: Some("linear:1s"),
                    ..Default::default()
                },
                "`backoff`",
            ),
            (
                PolicyParams {
                    jitter: Some("150%"),
                    ..Default::default()
                },
                "`jitter`",
            ),
            (
                PolicyParams {
                    intervals: Some("1s"),
                    backoff: Some("exponential"),
                    ..Default::default()
                },
                "only one",
            ),
        ];
        for (params, expected) in cases {
            let err = params.apply(RetryPolicy::default()).unwrap_err();
            assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
            assert!(
                err.message().contains(expected),
                "{expected}: {}",
                err.message()
            );
        }
        assert!(PolicyParams::default().is_empty());
    }

    #[test]
    fn scalar_params_name_the_field() {
        assert_eq!(duration("timeout", "30s"), Ok(Duration::from_secs(30)));
        assert!(
            duration("timeout", "30")
                .unwrap_err()
                .message()
                .contains("`timeout`")
        );
        assert_eq!(size("memory", "64MiB"), Ok(64 << 20));
        assert!(
            size("memory", "lots")
                .unwrap_err()
                .message()
                .contains("`memory`")
        );
        assert_eq!(number::<u32>("limit", "10"), Ok(10));
        assert!(
            number::<u32>("limit", "ten")
                .unwrap_err()
                .message()
                .contains("`limit`")
        );
        assert_eq!(boolean("latest", "true"), Ok(true));
        assert_eq!(boolean("latest", "false"), Ok(false));
        assert!(boolean("latest", "yes").is_err());
    }
}
