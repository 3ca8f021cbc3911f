//! Retry timing. Decides what happens to a job after an attempt; never talks to Redis, no I/O,
//! no clock. The main types are [`RetryPolicy`], stored with each job, and [`Decision`], which
//! [`decide`] returns; the caller turns a delay into a time and owns the random number source.
//!
//! # Outcome to decision
//!
//! [`Outcome::retry_class`] says what an outcome means by default; [`decide`] applies the job's
//! policy to it. `attempt` is the attempt that just ended, counting from 1.
//!
//! | class | outcomes | decision |
//! |---|---|---|
//! | done | `ok` | succeed |
//! | retry | `transient`, `timed_out` | retry, charged; exhausted at `attempt >= max_attempts` |
//! | fail | `permanent`, `memory_limit`, `fuel_exhausted`, `trap` | fail as permanent, at once |
//! | uncharged | `host_error`, `aborted` | retry after 1s, not charged, at any attempt |
//!
//! "Exhausted" and "permanent" are the [`FailReason`]s of a [`Decision::Fail`]; the uncharged
//! delay is [`UNCHARGED_RETRY_DELAY`], without backoff or jitter.
//!
//! # Formulas
//!
//! For retry `k` (the retry after attempt `k`, so `k >= 1`):
//!
//! - intervals `d1,d2,…,dn`: `delay = d[min(k, n)]`; the last interval repeats.
//! - exponential: `delay = min(base * factor^(k-1), max)`.
//! - jitter `j` (a fraction, 20% = 0.2) with the caller's `random` `r` in `[0, 1)`:
//!   `jittered = delay * (1 - j + 2*j*r)`, uniform over `[delay*(1-j), delay*(1+j)]`, rounded to
//!   the millisecond.
//! - a transient error's retry-after hint `h`: `final = max(jittered, min(h, hint_ceiling))`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{format_duration, parse_duration};
use crate::job::MAX_ATTEMPTS_LIMIT;
use crate::outcome::{Outcome, RetryClass};

/// How long a job waits after a host error before it runs again.
///
/// Fixed (no backoff, no jitter) because a host error says nothing about the job. It is short
/// because most host errors are momentary, but not zero, so that a host failing every attempt
/// does not spin; the caller bounds how many uncharged retries a job may take.
pub const UNCHARGED_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The default longest delay a task's retry-after hint can impose, one hour.
///
/// A hint comes from guest code, which is not trusted to park a job for days; a task that
/// needs longer waits should say so in its policy, which the operator chose.
pub const HINT_CEILING: Duration = Duration::from_secs(60 * 60);

/// The longest delay a policy may configure (an interval, an exponential `base` or `max`, the
/// hint ceiling): seven days.
///
/// A job that must wait longer is better failed and enqueued again; the bound also catches a
/// mistyped unit (`10y`) and keeps every delay far from overflowing when added to a timestamp.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The default number of attempts a job gets: the first run and two retries.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The default first delay of an exponential backoff, one second.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);

/// The default growth factor of an exponential backoff: each retry waits twice as long.
pub const DEFAULT_BACKOFF_FACTOR: f64 = 2.0;

/// The default cap of an exponential backoff, one hour.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60 * 60);

/// The default jitter, 20%.
///
/// On by default because jobs that failed together (a dependency went down) otherwise retry
/// together and hit it again at the same instant; 20% spreads them without making any delay
/// more than a fifth longer or shorter than the policy says.
pub const DEFAULT_JITTER_PERCENT: u8 = 20;

/// What happens to a job after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The job succeeded.
    Succeed,
    /// Run again after `delay`; `charged` says whether this attempt counts toward max attempts.
    ///
    /// When `charged` is false the next run reuses the same attempt number.
    Retry {
        /// How long to wait before the next attempt, measured from when this one ended.
        delay: Duration,
        /// Whether the attempt that just ended counts toward the job's max attempts.
        charged: bool,
    },
    /// The job fails for good and goes to the failed set, with why.
    Fail {
        /// Why the job will not run again.
        reason: FailReason,
    },
}

/// Why a job failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// The outcome's class is fail: retrying cannot help (a permanent error, a trap, a limit).
    Permanent,
    /// The outcome was worth retrying, but the job has used all its attempts.
    AttemptsExhausted,
}

impl FailReason {
    /// The reason's stable snake_case name, as used in logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Permanent => "permanent",
            FailReason::AttemptsExhausted => "attempts_exhausted",
        }
    }
}

/// Decides what happens to a job after attempt `attempt` (counting from 1) ended in `outcome`.
///
/// `random` is the caller's uniform random number in `[0, 1)`, used only for jitter; values
/// outside are clamped and NaN counts as 0.5 (no jitter). See the module documentation for
/// the table and formulas.
///
/// A retryable outcome at or past `max_attempts` fails the job. An uncharged one (a host
/// error, an abort) is retried at any attempt, so the caller must bound those itself, and must
/// not act at all if it no longer owns the job (a lost lease). The policy is assumed valid; an
/// invalid one still gets an answer, never a panic (an empty interval list waits zero, an
/// `attempt` of 0 is treated as 1).
pub fn decide(policy: &RetryPolicy, attempt: u32, outcome: &Outcome, random: f64) -> Decision {
    match outcome.retry_class() {
        RetryClass::Done => Decision::Succeed,
        RetryClass::Fail => Decision::Fail {
            reason: FailReason::Permanent,
        },
        RetryClass::Uncharged => Decision::Retry {
            delay: UNCHARGED_RETRY_DELAY,
            charged: false,
        },
        RetryClass::Retry if attempt >= policy.max_attempts => Decision::Fail {
            reason: FailReason::AttemptsExhausted,
        },
        RetryClass::Retry => {
            let delay = policy.delay(attempt, random);
            let delay = match retry_after_hint(outcome) {
                Some(hint) => delay.max(hint.min(policy.hint_ceiling)),
                None => delay,
            };
            Decision::Retry {
                delay,
                charged: true,
            }
        }
    }
}

// TODO(retry-hint-jitter): a retry-after hint is used exactly, without jitter, so jobs that a
// rate limiter told the same hint all wake at the same instant. Spread hints upward only (a
// hint is a floor) once the queue shows that this matters.
fn retry_after_hint(outcome: &Outcome) -> Option<Duration> {
    match outcome {
        Outcome::Transient {
            retry_after_ms: Some(ms),
            ..
        } => Some(Duration::from_millis(*ms)),
        _ => None,
    }
}

/// A job's retry policy: how many attempts it gets and how long it waits between them.
///
/// Stored with each job as JSON, with durations as integer milliseconds:
/// `{"max_attempts":3,"backoff":{"kind":"exponential","base_ms":1000,"factor":2.0,
/// "max_ms":3600000},"jitter_percent":20,"hint_ceiling_ms":3600000}`. Deserializing validates,
/// so a policy read back is always valid. Displays in the CLI's syntax, e.g. `max 3 attempts,
/// intervals 10s,30s,1m, jitter 20%`.
///
/// The default is 3 attempts, exponential backoff from 1s doubling up to 1h, and 20% jitter:
/// a failing job is retried after about 1s and 2s, long enough for a momentary blip to pass and
/// short enough not to hold the job up. The 1h cap only matters to policies with more attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RetryPolicyJson", into = "RetryPolicyJson")]
pub struct RetryPolicy {
    /// The most attempts the job gets, including the first, from 1 to [`MAX_ATTEMPTS_LIMIT`].
    /// Default 3.
    pub max_attempts: u32,
    /// How the delay grows from one retry to the next. Default exponential, 1s doubling to 1h.
    pub backoff: Backoff,
    /// How far, in percent (0 to 100), a delay is spread either side of the backoff's value.
    /// Default 20.
    ///
    /// Symmetric on purpose: it spreads a retry storm without making the average delay longer
    /// than the policy says.
    pub jitter_percent: u8,
    /// The longest delay a task's retry-after hint can impose. Default [`HINT_CEILING`].
    pub hint_ceiling: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: Backoff::default(),
            jitter_percent: DEFAULT_JITTER_PERCENT,
            hint_ceiling: HINT_CEILING,
        }
    }
}

impl RetryPolicy {
    /// Starts a builder from the default policy.
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder::default()
    }

    /// The delay before retry `retry` (counting from 1), jitter applied, without any hint.
    ///
    /// `random` is as for [`decide`]. Jitter also spreads a capped exponential delay, so a delay
    /// at the cap can reach `max * (1 + jitter)`: without that, every job that has reached the
    /// cap would wake at the same instant.
    pub fn delay(&self, retry: u32, random: f64) -> Duration {
        let delay = self.backoff.delay(retry);
        if self.jitter_percent == 0 {
            return delay;
        }

        let jitter = f64::from(self.jitter_percent.min(100)) / 100.0;
        let random = if random.is_nan() {
            0.5
        } else {
            random.clamp(0.0, 1.0)
        };
        let scale = 1.0 - jitter + 2.0 * jitter * random;
        // `scale` is in [0, 2] and a valid delay is at most a week (6.048e8 ms), so the product
        // is exact enough, finite and non-negative; `as` saturates in any case.
        Duration::from_millis((delay.as_millis() as f64 * scale).round() as u64)
    }

    /// Checks every field against its accepted range.
    ///
    /// # Errors
    ///
    /// Returns a message naming the field, its value and the accepted range: `max_attempts`
    /// outside 1 to [`MAX_ATTEMPTS_LIMIT`], an invalid backoff (see [`Backoff::validate`]),
    /// jitter above 100%, or a hint ceiling above [`MAX_RETRY_DELAY`] or finer than a
    /// millisecond.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            return Err(format!(
                "max attempts {} is out of range; use between 1 and {MAX_ATTEMPTS_LIMIT}",
                self.max_attempts
            ));
        }
        self.backoff.validate()?;
        if self.jitter_percent > 100 {
            return Err(format!(
                "jitter {}% is out of range; use 0% to 100%",
                self.jitter_percent
            ));
        }
        check_delay("hint ceiling", self.hint_ceiling)
    }
}

impl fmt::Display for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let noun = if self.max_attempts == 1 {
            "attempt"
        } else {
            "attempts"
        };
        write!(f, "max {} {noun}, ", self.max_attempts)?;
        match &self.backoff {
            Backoff::Intervals(_) => write!(f, "intervals {}", self.backoff)?,
            Backoff::Exponential { .. } => write!(f, "{}", self.backoff)?,
        }
        write!(f, ", jitter {}%", self.jitter_percent)?;
        // Only a non-default ceiling is worth a listing's width.
        if self.hint_ceiling != HINT_CEILING {
            write!(
                f,
                ", hints capped at {}",
                format_duration(self.hint_ceiling)
            )?;
        }
        Ok(())
    }
}

/// Builds a [`RetryPolicy`], starting from the default and validating at the end.
#[derive(Debug, Clone, Default)]
pub struct RetryPolicyBuilder {
    policy: RetryPolicy,
}

impl RetryPolicyBuilder {
    /// Sets the most attempts the job gets, including the first.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.policy.max_attempts = max_attempts;
        self
    }

    /// Sets the backoff, e.g. from [`Backoff::parse`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.policy.backoff = backoff;
        self
    }

    /// Sets the jitter in percent, e.g. from [`parse_jitter`].
    pub fn jitter_percent(mut self, jitter_percent: u8) -> Self {
        self.policy.jitter_percent = jitter_percent;
        self
    }

    /// Sets the longest delay a retry-after hint can impose.
    pub fn hint_ceiling(mut self, hint_ceiling: Duration) -> Self {
        self.policy.hint_ceiling = hint_ceiling;
        self
    }

    /// Returns the policy if it is valid.
    ///
    /// # Errors
    ///
    /// Returns the message of [`RetryPolicy::validate`].
    pub fn build(self) -> Result<RetryPolicy, String> {
        self.policy.validate()?;
        Ok(self.policy)
    }
}

/// How the delay before a retry grows with the retry number.
#[derive(Debug, Clone, PartialEq)]
pub enum Backoff {
    /// Retry `k` waits the `k`-th delay; retries past the end of the list wait the last one.
    /// Written `10s,30s,60s`.
    Intervals(Vec<Duration>),
    /// Retry `k` waits `base * factor^(k-1)`, capped at `max`. Written
    /// `exponential:base=1s,factor=2,max=10m`.
    Exponential {
        /// The delay before the first retry; more than zero.
        base: Duration,
        /// How much each delay is multiplied by; finite and at least 1 (1 means a fixed delay).
        factor: f64,
        /// The longest delay; at least `base`.
        max: Duration,
    },
}

impl Default for Backoff {
    /// Exponential from [`DEFAULT_BACKOFF_BASE`], growing by [`DEFAULT_BACKOFF_FACTOR`] up to
    /// [`DEFAULT_BACKOFF_MAX`].
    fn default() -> Self {
        Backoff::Exponential {
            base: DEFAULT_BACKOFF_BASE,
            factor: DEFAULT_BACKOFF_FACTOR,
            max: DEFAULT_BACKOFF_MAX,
        }
    }
}

impl Backoff {
    /// Parses a backoff in the CLI's syntax.
    ///
    /// Either a comma-separated list of delays, `10s,30s,60s` (optionally prefixed
    /// `intervals:`), or `exponential:` followed by any of `base=`, `factor=` and `max=` in any
    /// order. Omitted keys take their defaults: base [`DEFAULT_BACKOFF_BASE`] (1s), factor
    /// [`DEFAULT_BACKOFF_FACTOR`] (2), max [`DEFAULT_BACKOFF_MAX`] (1h); a bare `exponential`
    /// means all three.
    ///
    /// # Errors
    ///
    /// Returns a message naming the bad part and showing the expected form: an empty list or
    /// entry, a delay without a unit, an unknown kind or key, a key given twice, a factor that
    /// is not a finite number of at least 1, a zero base, a max shorter than the base, or a
    /// delay out of range (see [`Backoff::validate`]).
    pub fn parse(text: &str) -> Result<Backoff, String> {
        let text = text.trim();
        // Durations never contain `:`, so a colon always ends a kind.
        let (kind, body) = match text.split_once(':') {
            Some((kind, body)) => (kind.trim(), body),
            None if text == "exponential" => ("exponential", ""),
            None => ("intervals", text),
        };
        match kind {
            "intervals" => parse_intervals(body),
            "exponential" => parse_exponential(body),
            _ => Err(format!(
                "unknown backoff `{kind}`; expected a list of delays such as `10s,30s,60s` or \
                 `exponential:base=1s,factor=2,max=10m`"
            )),
        }
    }

    /// The delay before retry `retry` (counting from 1), before jitter.
    ///
    /// Retry 0 is treated as 1; an empty interval list (invalid) waits zero.
    pub fn delay(&self, retry: u32) -> Duration {
        let retry = retry.max(1);
        match self {
            Backoff::Intervals(delays) => {
                let index = usize::try_from(retry - 1).unwrap_or(usize::MAX);
                delays
                    .get(index)
                    .or(delays.last())
                    .copied()
                    .unwrap_or(Duration::ZERO)
            }
            Backoff::Exponential { base, factor, max } => {
                let exponent = i32::try_from(retry - 1).unwrap_or(i32::MAX);
                let grown = base.as_millis() as f64 * factor.powi(exponent);
                let max_ms = max.as_millis() as f64;
                // Written so that infinity (a large exponent) and NaN (an invalid factor) both
                // fall to the cap instead of reaching the cast.
                let capped = if grown < max_ms { grown } else { max_ms };
                Duration::from_millis(capped.round() as u64)
            }
        }
    }

    /// Checks the backoff's values.
    ///
    /// # Errors
    ///
    /// Returns a message when the interval list is empty or longer than [`MAX_ATTEMPTS_LIMIT`]
    /// (later entries could never be used), when the base is zero, the factor is not finite or
    /// is below 1, the max is shorter than the base, or any delay is longer than
    /// [`MAX_RETRY_DELAY`] or finer than a millisecond (delays are stored in milliseconds).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Backoff::Intervals(delays) => {
                if delays.is_empty() {
                    return Err(empty_intervals());
                }
                if delays.len() > MAX_ATTEMPTS_LIMIT as usize {
                    return Err(format!(
                        "the interval list has {} delays; a job has at most \
                         {MAX_ATTEMPTS_LIMIT} attempts, so give at most {MAX_ATTEMPTS_LIMIT}",
                        delays.len()
                    ));
                }
                for (index, delay) in delays.iter().enumerate() {
                    check_delay(&format!("interval {}", index + 1), *delay)?;
                }
                Ok(())
            }
            Backoff::Exponential { base, factor, max } => {
                if base.is_zero() {
                    return Err(
                        "base is 0s, so every retry would be immediate; use e.g. `base=1s`"
                            .to_owned(),
                    );
                }
                check_delay("base", *base)?;
                if !factor.is_finite() {
                    return Err(format!(
                        "factor {factor} is not a finite number; use e.g. `factor=2`"
                    ));
                }
                if *factor < 1.0 {
                    return Err(format!(
                        "factor {factor} is below 1, so delays would shrink; use at least 1, \
                         e.g. `factor=2`"
                    ));
                }
                check_delay("max", *max)?;
                if max < base {
                    return Err(format!(
                        "max `{}` is shorter than base `{}`; max caps the delay, so it must be \
                         at least the base",
                        format_duration(*max),
                        format_duration(*base)
                    ));
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Backoff {
    /// Writes the backoff in the syntax [`Backoff::parse`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backoff::Intervals(delays) => {
                for (index, delay) in delays.iter().enumerate() {
                    if index > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(&format_duration(*delay))?;
                }
                Ok(())
            }
            Backoff::Exponential { base, factor, max } => write!(
                f,
                "exponential:base={},factor={factor},max={}",
                format_duration(*base),
                format_duration(*max)
            ),
        }
    }
}

impl std::str::FromStr for Backoff {
    type Err = String;

    /// Same as [`Backoff::parse`], so clap can take a `Backoff` directly.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Backoff::parse(text)
    }
}

/// Parses a jitter percentage such as `20%`, from `0%` to `100%`.
///
/// # Errors
///
/// Refuses a number without `%` (a bare `0.2` could mean 0.2% or 20%), a fraction of a
/// percent, and anything outside 0% to 100%.
pub fn parse_jitter(text: &str) -> Result<u8, String> {
    let text = text.trim();
    let Some(number) = text.strip_suffix('%') else {
        return Err(format!(
            "jitter `{text}` has no `%`; write it as a percentage, e.g. `20%`"
        ));
    };
    let Ok(percent) = number.trim().parse::<f64>() else {
        return Err(format!(
            "jitter `{text}` is not a percentage; use 0% to 100%, e.g. `20%`"
        ));
    };
    // `!(..contains)` rather than `<`/`>` so that NaN is refused too.
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!("jitter `{text}` is out of range; use 0% to 100%"));
    }
    if percent.fract() != 0.0 {
        return Err(format!(
            "jitter `{text}` is not a whole percentage; use 0% to 100%, e.g. `20%`"
        ));
    }
    // In range and whole, checked above.
    Ok(percent as u8)
}

fn parse_intervals(text: &str) -> Result<Backoff, String> {
    if text.trim().is_empty() {
        return Err(empty_intervals());
    }

    let mut delays = Vec::new();
    for (index, part) in text.split(',').enumerate() {
        let position = index + 1;
        let part = part.trim();
        if part.is_empty() {
            return Err(format!(
                "interval list `{}` has an empty entry at position {position}; separate delays \
                 with single commas, e.g. `10s,30s,60s`",
                text.trim()
            ));
        }
        let delay = parse_duration(part).map_err(|err| format!("interval {position}: {err}"))?;
        delays.push(delay);
    }

    let backoff = Backoff::Intervals(delays);
    backoff.validate()?;
    Ok(backoff)
}

fn parse_exponential(text: &str) -> Result<Backoff, String> {
    let mut base = None;
    let mut factor = None;
    let mut max = None;
    if !text.trim().is_empty() {
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!(
                    "exponential backoff `{}` has an empty entry; separate keys with single \
                     commas, e.g. `exponential:base=1s,factor=2,max=10m`",
                    text.trim()
                ));
            }
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let (key, value) = (key.trim(), value.trim());
            if value.is_empty() {
                return Err(format!(
                    "backoff key `{key}` has no value; write each key as `key=value`, e.g. \
                     `exponential:base=1s,factor=2,max=10m`"
                ));
            }
            let given_twice = match key {
                "base" => base.replace(parse_delay("base", value)?).is_some(),
                "max" => max.replace(parse_delay("max", value)?).is_some(),
                "factor" => factor.replace(parse_factor(value)?).is_some(),
                _ => {
                    return Err(format!(
                        "unknown backoff key `{key}`; expected base, factor or max"
                    ));
                }
            };
            if given_twice {
                return Err(format!(
                    "backoff key `{key}` is given twice; give each of base, factor and max at \
                     most once"
                ));
            }
        }
    }

    let base = base.unwrap_or(DEFAULT_BACKOFF_BASE);
    if max.is_none() && base > DEFAULT_BACKOFF_MAX {
        // Otherwise the user would be told about a max they never wrote.
        return Err(format!(
            "base `{}` is longer than the default max `{}`; give a max of at least the base, \
             e.g. `max={}`",
            format_duration(base),
            format_duration(DEFAULT_BACKOFF_MAX),
            format_duration(base)
        ));
    }
    let backoff = Backoff::Exponential {
        base,
        factor: factor.unwrap_or(DEFAULT_BACKOFF_FACTOR),
        max: max.unwrap_or(DEFAULT_BACKOFF_MAX),
    };
    backoff.validate()?;
    Ok(backoff)
}

fn empty_intervals() -> String {
    "the interval list is empty; give at least one delay, e.g. `10s,30s,60s`".to_owned()
}

fn parse_delay(key: &str, text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|err| format!("{key}: {err}"))
}

fn parse_factor(text: &str) -> Result<f64, String> {
    text.parse::<f64>().map_err(|_| {
        format!("factor `{text}` is not a number; use a number of at least 1, e.g. `factor=2`")
    })
}

fn check_delay(what: &str, delay: Duration) -> Result<(), String> {
    if delay > MAX_RETRY_DELAY {
        return Err(format!(
            "{what} `{}` is longer than the longest retry delay, {}; a job that must wait \
             longer is better failed and enqueued again",
            format_duration(delay),
            format_duration(MAX_RETRY_DELAY)
        ));
    }
    if !delay.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(format!(
            "{what} `{}` is finer than a millisecond; retry delays are whole milliseconds",
            format_duration(delay)
        ));
    }
    Ok(())
}

/// Saturating, because only an invalid policy (which deserialization refuses) can exceed u64.
fn to_millis(delay: Duration) -> u64 {
    u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
}

/// The stored JSON shape of [`RetryPolicy`]. Kept apart from the public type so that the
/// shape is written down in one place and every policy read back is validated.
#[derive(Serialize, Deserialize)]
struct RetryPolicyJson {
    max_attempts: u32,
    backoff: BackoffJson,
    jitter_percent: u8,
    hint_ceiling_ms: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum BackoffJson {
    Intervals {
        delays_ms: Vec<u64>,
    },
    Exponential {
        base_ms: u64,
        factor: f64,
        max_ms: u64,
    },
}

impl From<RetryPolicy> for RetryPolicyJson {
    fn from(policy: RetryPolicy) -> Self {
        let backoff = match policy.backoff {
            Backoff::Intervals(delays) => BackoffJson::Intervals {
                delays_ms: delays.into_iter().map(to_millis).collect(),
            },
            Backoff::Exponential { base, factor, max } => BackoffJson::Exponential {
                base_ms: to_millis(base),
                factor,
                max_ms: to_millis(max),
            },
        };
        RetryPolicyJson {
            max_attempts: policy.max_attempts,
            backoff,
            jitter_percent: policy.jitter_percent,
            hint_ceiling_ms: to_millis(policy.hint_ceiling),
        }
    }
}

impl TryFrom<RetryPolicyJson> for RetryPolicy {
    type Error = String;

    fn try_from(json: RetryPolicyJson) -> Result<Self, Self::Error> {
        let backoff = match json.backoff {
            BackoffJson::Intervals { delays_ms } => {
                Backoff::Intervals(delays_ms.into_iter().map(Duration::from_millis).collect())
            }
            BackoffJson::Exponential {
                base_ms,
                factor,
                max_ms,
            } => Backoff::Exponential {
                base: Duration::from_millis(base_ms),
                factor,
                max: Duration::from_millis(max_ms),
            },
        };
        let policy = RetryPolicy {
            max_attempts: json.max_attempts,
            backoff,
            jitter_percent: json.jitter_percent,
            hint_ceiling: Duration::from_millis(json.hint_ceiling_ms),
        };
        policy.validate()?;
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::TrapKind;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn intervals(text: &str) -> RetryPolicy {
        RetryPolicy::builder()
            .max_attempts(10)
            .backoff(Backoff::parse(text).unwrap())
            .jitter_percent(0)
            .build()
            .unwrap()
    }

    fn exponential(base: u64, factor: f64, max: u64) -> Backoff {
        Backoff::Exponential {
            base: secs(base),
            factor,
            max: secs(max),
        }
    }

    fn transient(retry_after_ms: Option<u64>) -> Outcome {
        Outcome::Transient {
            message: "busy".into(),
            retry_after_ms,
            code: None,
        }
    }

    fn host_error() -> Outcome {
        Outcome::HostError {
            message: "pool exhausted".into(),
        }
    }

    fn retry_after(delay: Duration) -> Decision {
        Decision::Retry {
            delay,
            charged: true,
        }
    }

    #[test]
    fn interval_list_repeats_its_last_value() {
        let policy = intervals("10s,30s,60s");
        let delays: Vec<_> = [1, 2, 3, 4, 9].map(|retry| policy.delay(retry, 0.5)).into();
        assert_eq!(delays, [secs(10), secs(30), secs(60), secs(60), secs(60)]);

        let decision = decide(&policy, 5, &transient(None), 0.5);
        assert_eq!(decision, retry_after(secs(60)));
    }

    #[test]
    fn first_retry_uses_the_first_interval() {
        let policy = intervals("10s,30s,60s");
        assert_eq!(
            decide(&policy, 1, &transient(None), 0.5),
            retry_after(secs(10))
        );
    }

    #[test]
    fn exponential_grows_by_factor_until_max() {
        let backoff = exponential(1, 2.0, 10);
        let delays: Vec<_> = (1..=6).map(|retry| backoff.delay(retry)).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10].map(secs));
    }

    #[test]
    fn exponential_caps_huge_exponents_without_overflow() {
        let backoff = exponential(1, 10.0, 3600);
        assert_eq!(backoff.delay(MAX_ATTEMPTS_LIMIT), secs(3600));
        assert_eq!(backoff.delay(u32::MAX), secs(3600));
    }

    #[test]
    fn exponential_with_factor_one_is_a_fixed_delay() {
        let backoff = exponential(5, 1.0, 60);
        assert_eq!(backoff.delay(1), secs(5));
        assert_eq!(backoff.delay(50), secs(5));
    }

    #[test]
    fn exponential_factor_may_be_fractional() {
        let backoff = exponential(2, 1.5, 60);
        assert_eq!(backoff.delay(2), secs(3));
        assert_eq!(backoff.delay(3), Duration::from_millis(4500));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let policy = RetryPolicy {
            backoff: Backoff::Intervals(vec![secs(10)]),
            jitter_percent: 20,
            ..RetryPolicy::default()
        };
        assert_eq!(policy.delay(1, 0.0), secs(8));
        assert_eq!(policy.delay(1, 0.5), secs(10));
        let high = policy.delay(1, 0.999_999_9);
        assert!(
            high > Duration::from_millis(11_990) && high <= secs(12),
            "{high:?}"
        );

        for step in 0..1000 {
            let delay = policy.delay(1, f64::from(step) / 1000.0);
            assert!((secs(8)..=secs(12)).contains(&delay), "{step}: {delay:?}");
        }
    }

    #[test]
    fn jitter_clamps_random_values_outside_the_unit_range() {
        let policy = RetryPolicy {
            backoff: Backoff::Intervals(vec![secs(10)]),
            jitter_percent: 50,
            ..RetryPolicy::default()
        };
        assert_eq!(policy.delay(1, -3.0), secs(5));
        assert_eq!(policy.delay(1, 7.0), secs(15));
        assert_eq!(policy.delay(1, f64::NAN), secs(10));
    }

    #[test]
    fn full_jitter_can_reach_zero_and_double() {
        let policy = RetryPolicy {
            backoff: Backoff::Intervals(vec![secs(10)]),
            jitter_percent: 100,
            ..RetryPolicy::default()
        };
        assert_eq!(policy.delay(1, 0.0), Duration::ZERO);
        assert_eq!(policy.delay(1, 1.0), secs(20));
    }

    #[test]
    fn jitter_spreads_delays_at_the_exponential_cap() {
        let policy = RetryPolicy {
            backoff: exponential(1, 2.0, 10),
            jitter_percent: 20,
            ..RetryPolicy::default()
        };
        assert_eq!(policy.delay(20, 0.0), secs(8));
        assert_eq!(policy.delay(20, 1.0), secs(12));
    }

    #[test]
    fn hint_lengthens_the_delay() {
        let policy = intervals("10s");
        let decision = decide(&policy, 1, &transient(Some(30_000)), 0.5);
        assert_eq!(decision, retry_after(secs(30)));
    }

    #[test]
    fn hint_never_shortens_the_delay() {
        let policy = intervals("10s");
        let decision = decide(&policy, 1, &transient(Some(2_000)), 0.5);
        assert_eq!(decision, retry_after(secs(10)));
    }

    #[test]
    fn hint_is_clamped_at_the_ceiling() {
        let policy = intervals("10s");
        let five_hours = 5 * 60 * 60 * 1000;
        let decision = decide(&policy, 1, &transient(Some(five_hours)), 0.5);
        assert_eq!(decision, retry_after(HINT_CEILING));

        let decision = decide(&policy, 1, &transient(Some(u64::MAX)), 0.5);
        assert_eq!(decision, retry_after(HINT_CEILING));
    }

    #[test]
    fn hint_ceiling_of_zero_ignores_hints() {
        let policy = RetryPolicy {
            hint_ceiling: Duration::ZERO,
            ..intervals("10s")
        };
        let decision = decide(&policy, 1, &transient(Some(60_000)), 0.5);
        assert_eq!(decision, retry_after(secs(10)));
    }

    #[test]
    fn exhausted_after_exactly_max_attempts() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..intervals("1s")
        };
        let timed_out = Outcome::TimedOut { timeout_ms: 30_000 };
        let exhausted = Decision::Fail {
            reason: FailReason::AttemptsExhausted,
        };
        for outcome in [transient(None), timed_out] {
            assert_eq!(decide(&policy, 1, &outcome, 0.5), retry_after(secs(1)));
            assert_eq!(decide(&policy, 2, &outcome, 0.5), retry_after(secs(1)));
            assert_eq!(decide(&policy, 3, &outcome, 0.5), exhausted);
            assert_eq!(decide(&policy, 4, &outcome, 0.5), exhausted);
        }
    }

    #[test]
    fn single_attempt_policy_never_retries() {
        let policy = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        assert_eq!(
            decide(&policy, 1, &transient(Some(1_000)), 0.5),
            Decision::Fail {
                reason: FailReason::AttemptsExhausted
            }
        );
    }

    #[test]
    fn permanent_fails_at_attempt_one() {
        let policy = RetryPolicy::default();
        let outcomes = [
            Outcome::Permanent {
                message: "bad input".into(),
                code: Some("invalid-payload".into()),
            },
            Outcome::MemoryLimit {
                limit_bytes: 1 << 20,
            },
            Outcome::FuelExhausted { fuel: 1_000 },
            Outcome::Trap {
                kind: TrapKind::Panic,
                message: "oops".into(),
            },
        ];
        for outcome in outcomes {
            assert_eq!(
                decide(&policy, 1, &outcome, 0.5),
                Decision::Fail {
                    reason: FailReason::Permanent
                },
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn success_succeeds_at_any_attempt() {
        let policy = RetryPolicy::default();
        assert_eq!(decide(&policy, 1, &Outcome::Ok, 0.5), Decision::Succeed);
        assert_eq!(decide(&policy, 99, &Outcome::Ok, 0.5), Decision::Succeed);
    }

    #[test]
    fn uncharged_never_exhausts() {
        let policy = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        let uncharged = Decision::Retry {
            delay: UNCHARGED_RETRY_DELAY,
            charged: false,
        };
        for attempt in [1, 2, MAX_ATTEMPTS_LIMIT, u32::MAX] {
            assert_eq!(decide(&policy, attempt, &host_error(), 0.0), uncharged);
        }
    }

    #[test]
    fn invalid_policies_still_get_an_answer() {
        let empty = RetryPolicy {
            backoff: Backoff::Intervals(Vec::new()),
            ..RetryPolicy::default()
        };
        assert_eq!(empty.delay(1, 0.5), Duration::ZERO);

        let nan = RetryPolicy {
            backoff: Backoff::Exponential {
                base: secs(1),
                factor: f64::NAN,
                max: secs(60),
            },
            jitter_percent: 0,
            ..RetryPolicy::default()
        };
        assert_eq!(nan.delay(2, 0.5), secs(60));
        assert_eq!(intervals("10s,20s").delay(0, 0.5), secs(10));
    }

    #[test]
    fn parses_interval_lists() {
        let expected = Backoff::Intervals(vec![secs(10), secs(30), secs(60)]);
        assert_eq!(Backoff::parse("10s,30s,60s"), Ok(expected.clone()));
        assert_eq!(Backoff::parse(" 10s , 30s, 1m "), Ok(expected.clone()));
        assert_eq!(Backoff::parse("intervals:10s,30s,60s"), Ok(expected));
        assert_eq!(
            Backoff::parse("250ms"),
            Ok(Backoff::Intervals(vec![Duration::from_millis(250)]))
        );
    }

    #[test]
    fn parses_exponential_keys_in_any_order() {
        let expected = Ok(Backoff::Exponential {
            base: secs(1),
            factor: 3.0,
            max: secs(600),
        });
        assert_eq!(
            Backoff::parse("exponential:base=1s,factor=3,max=10m"),
            expected
        );
        assert_eq!(
            Backoff::parse("exponential: max = 10m, factor = 3, base = 1s"),
            expected
        );
    }

    #[test]
    fn exponential_keys_default_when_omitted() {
        assert_eq!(Backoff::parse("exponential"), Ok(Backoff::default()));
        assert_eq!(Backoff::parse("exponential:"), Ok(Backoff::default()));
        assert_eq!(
            Backoff::parse("exponential:factor=1.5"),
            Ok(Backoff::Exponential {
                base: DEFAULT_BACKOFF_BASE,
                factor: 1.5,
                max: DEFAULT_BACKOFF_MAX,
            })
        );
        assert_eq!(
            Backoff::parse("exponential:base=2h,max=3h"),
            Ok(exponential(7200, DEFAULT_BACKOFF_FACTOR, 10_800))
        );
    }

    #[test]
    fn backoff_parse_errors_name_the_bad_part() {
        let cases = [
            (
                "",
                "the interval list is empty; give at least one delay, e.g. `10s,30s,60s`",
            ),
            ("  ", "the interval list is empty"),
            ("intervals:", "the interval list is empty"),
            ("10s,,30s", "empty entry at position 2"),
            ("10s,", "empty entry at position 2"),
            ("10s,soon", "interval 2: `soon` is not a duration"),
            ("10s,30", "interval 2: `30` has no unit"),
            (
                "1500us",
                "interval 1 `1ms 500us` is finer than a millisecond",
            ),
            (
                "1s,8days",
                "interval 2 `8days` is longer than the longest retry delay, 7days",
            ),
            (
                "linear:step=1s",
                "unknown backoff `linear`; expected a list of delays",
            ),
            (
                "exponential:fact=2",
                "unknown backoff key `fact`; expected base, factor or max",
            ),
            ("exponential:base", "backoff key `base` has no value"),
            ("exponential:base=", "backoff key `base` has no value"),
            ("exponential:base=1s,,max=1m", "has an empty entry"),
            (
                "exponential:base=1s,base=2s",
                "backoff key `base` is given twice",
            ),
            ("exponential:base=soon", "base: `soon` is not a duration"),
            ("exponential:max=10", "max: `10` has no unit"),
            ("exponential:factor=two", "factor `two` is not a number"),
            ("exponential:factor=0", "factor 0 is below 1"),
            ("exponential:factor=-2", "factor -2 is below 1"),
            ("exponential:factor=0.5", "factor 0.5 is below 1"),
            (
                "exponential:factor=inf",
                "factor inf is not a finite number",
            ),
            (
                "exponential:factor=NaN",
                "factor NaN is not a finite number",
            ),
            ("exponential:base=0s", "base is 0s"),
            (
                "exponential:base=10s,max=1s",
                "max `1s` is shorter than base `10s`; max caps the delay",
            ),
            (
                "exponential:base=2h",
                "base `2h` is longer than the default max `1h`",
            ),
            (
                "exponential:max=30days",
                "max `30days` is longer than the longest retry delay",
            ),
            (
                "exponential:base=8days,max=9days",
                "base `8days` is longer than the longest",
            ),
        ];
        for (text, expected) in cases {
            let err = Backoff::parse(text).unwrap_err();
            assert!(err.contains(expected), "`{text}`: {err}");
        }
    }

    #[test]
    fn interval_list_longer_than_max_attempts_is_refused() {
        let text = vec!["1s"; MAX_ATTEMPTS_LIMIT as usize + 1].join(",");
        let err = Backoff::parse(&text).unwrap_err();
        assert!(err.contains("has 1001 delays"), "{err}");
    }

    #[test]
    fn parses_jitter_percentages() {
        assert_eq!(parse_jitter("20%"), Ok(20));
        assert_eq!(parse_jitter(" 0% "), Ok(0));
        assert_eq!(parse_jitter("100 %"), Ok(100));
    }

    #[test]
    fn jitter_parse_errors_name_the_bad_part() {
        let cases = [
            ("150%", "jitter `150%` is out of range; use 0% to 100%"),
            ("-5%", "jitter `-5%` is out of range"),
            ("NaN%", "jitter `NaN%` is out of range"),
            ("20", "jitter `20` has no `%`"),
            ("0.2", "jitter `0.2` has no `%`"),
            ("lots%", "jitter `lots%` is not a percentage"),
            ("%", "jitter `%` is not a percentage"),
            ("12.5%", "jitter `12.5%` is not a whole percentage"),
        ];
        for (text, expected) in cases {
            let err = parse_jitter(text).unwrap_err();
            assert!(err.contains(expected), "`{text}`: {err}");
        }
    }

    #[test]
    fn validate_refuses_out_of_range_fields() {
        let cases = [
            (
                RetryPolicy::builder().max_attempts(0),
                "max attempts 0 is out of range; use between 1 and 1000",
            ),
            (
                RetryPolicy::builder().max_attempts(MAX_ATTEMPTS_LIMIT + 1),
                "max attempts 1001 is out of range",
            ),
            (
                RetryPolicy::builder().jitter_percent(101),
                "jitter 101% is out of range",
            ),
            (
                RetryPolicy::builder().hint_ceiling(secs(8 * 24 * 60 * 60)),
                "hint ceiling `8days` is longer than the longest retry delay",
            ),
            (
                RetryPolicy::builder().backoff(Backoff::Intervals(Vec::new())),
                "the interval list is empty",
            ),
        ];
        for (builder, expected) in cases {
            let err = builder.build().unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn default_policy_is_valid() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.validate(), Ok(()));
        assert_eq!(RetryPolicy::builder().build(), Ok(policy));
    }

    #[test]
    fn displays_in_the_cli_syntax() {
        let policy = RetryPolicy::builder()
            .backoff(Backoff::parse("10s,30s,60s").unwrap())
            .build()
            .unwrap();
        assert_eq!(
            policy.to_string(),
            "max 3 attempts, intervals 10s,30s,1m, jitter 20%"
        );
        assert_eq!(
            RetryPolicy::default().to_string(),
            "max 3 attempts, exponential:base=1s,factor=2,max=1h, jitter 20%"
        );
        let single = RetryPolicy::builder()
            .max_attempts(1)
            .jitter_percent(0)
            .hint_ceiling(secs(30 * 60))
            .build()
            .unwrap();
        assert_eq!(
            single.to_string(),
            "max 1 attempt, exponential:base=1s,factor=2,max=1h, jitter 0%, hints capped at 30m"
        );
    }

    #[test]
    fn displayed_backoff_parses_back_to_itself() {
        let backoffs = [
            Backoff::parse("10s,30s,60s").unwrap(),
            Backoff::Intervals(vec![Duration::from_millis(1_500), Duration::ZERO]),
            Backoff::parse("exponential:base=250ms,factor=1.5,max=1h 30m").unwrap(),
            Backoff::default(),
        ];
        for backoff in backoffs {
            assert_eq!(Backoff::parse(&backoff.to_string()), Ok(backoff.clone()));
        }
    }

    #[test]
    fn stored_json_shape_is_stable() {
        let json = serde_json::to_value(RetryPolicy::default()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "max_attempts": 3,
                "backoff": {
                    "kind": "exponential",
                    "base_ms": 1000,
                    "factor": 2.0,
                    "max_ms": 3_600_000,
                },
                "jitter_percent": 20,
                "hint_ceiling_ms": 3_600_000,
            })
        );

        let policy = intervals("250ms,30s");
        let json = serde_json::to_value(&policy).unwrap();
        assert_eq!(
            json["backoff"],
            serde_json::json!({"kind": "intervals", "delays_ms": [250, 30_000]})
        );
    }

    #[test]
    fn serde_round_trip_preserves_the_policy() {
        let policies = [
            RetryPolicy::default(),
            intervals("250ms,30s,1h"),
            RetryPolicy::builder()
                .max_attempts(MAX_ATTEMPTS_LIMIT)
                .backoff(Backoff::parse("exponential:base=100ms,factor=1.1,max=7days").unwrap())
                .jitter_percent(100)
                .hint_ceiling(Duration::ZERO)
                .build()
                .unwrap(),
        ];
        for policy in policies {
            let json = serde_json::to_string(&policy).unwrap();
            let back: RetryPolicy = serde_json::from_str(&json).unwrap();
            assert_eq!(back, policy, "{json}");
        }
    }

    #[test]
    fn deserializing_refuses_invalid_policies() {
        use serde_json::json;

        let policy = |max_attempts: u32, backoff: serde_json::Value, jitter_percent: u8| {
            json!({
                "max_attempts": max_attempts,
                "backoff": backoff,
                "jitter_percent": jitter_percent,
                "hint_ceiling_ms": 0,
            })
        };
        let one_second = json!({"kind": "intervals", "delays_ms": [1000]});
        let halving =
            json!({"kind": "exponential", "base_ms": 1000, "factor": 0.5, "max_ms": 2000});
        let invalid = [
            policy(0, one_second.clone(), 0),
            policy(3, json!({"kind": "intervals", "delays_ms": []}), 0),
            policy(3, halving, 0),
            policy(3, json!({"kind": "linear", "step_ms": 1000}), 0),
            policy(3, one_second.clone(), 101),
        ];
        assert!(serde_json::from_value::<RetryPolicy>(policy(3, one_second, 0)).is_ok());
        for json in invalid {
            let result = serde_json::from_value::<RetryPolicy>(json.clone());
            assert!(result.is_err(), "{json}");
        }
    }

    #[test]
    fn fail_reasons_have_stable_names() {
        for reason in [FailReason::Permanent, FailReason::AttemptsExhausted] {
            let json = serde_json::to_value(reason).unwrap();
            assert_eq!(json, reason.as_str());
        }
    }
}
