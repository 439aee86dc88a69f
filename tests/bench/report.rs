//! Goals in code: every figure with a goal is compared with it and printed
//! `met` or `MISSED`; figures without one are printed as `info`. A figure
//! that could not be measured (a field missing from `qu status --json`, say)
//! is a miss, never a zero. `finish` prints the tally and gives the exit code.

use std::fmt;
use std::time::Duration;

/// What a figure counts, so a goal and its figure cannot be in different units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Millis,
    /// 1,000 bytes.
    Kilobytes,
    /// 1,000,000 bytes.
    Megabytes,
    Count,
}

/// A measured (or goal) amount. Signed: an overhead can come out negative,
/// and is shown as it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantity {
    pub value: f64,
    pub unit: Unit,
}

impl Quantity {
    pub fn millis(value: f64) -> Self {
        Self { value, unit: Unit::Millis }
    }

    pub fn micros(value: u64) -> Self {
        Self::millis(value as f64 / 1000.0)
    }

    pub fn duration(duration: Duration) -> Self {
        Self::millis(duration.as_secs_f64() * 1000.0)
    }

    pub fn kilobytes(value: f64) -> Self {
        Self { value, unit: Unit::Kilobytes }
    }

    pub fn megabytes(value: f64) -> Self {
        Self { value, unit: Unit::Megabytes }
    }

    pub fn count(value: u64) -> Self {
        Self { value: value as f64, unit: Unit::Count }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.value;
        match self.unit {
            Unit::Millis if v.abs() >= 1000.0 => write!(f, "{:.2} s", v / 1000.0),
            Unit::Millis => write!(f, "{v:.2} ms"),
            Unit::Kilobytes => write!(f, "{v:.1} KB"),
            Unit::Megabytes => write!(f, "{v:.1} MB"),
            Unit::Count => write!(f, "{v:.0}"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Goal {
    AtMost(Quantity),
    AtLeast(Quantity),
}

impl Goal {
    fn bound(&self) -> Quantity {
        match self {
            Goal::AtMost(q) | Goal::AtLeast(q) => *q,
        }
    }

    pub fn is_met(&self, measured: Quantity) -> bool {
        assert_eq!(measured.unit, self.bound().unit, "a figure and its goal must be in the same unit");
        match self {
            Goal::AtMost(bound) => measured.value <= bound.value,
            Goal::AtLeast(bound) => measured.value >= bound.value,
        }
    }
}

impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Goal::AtMost(q) => write!(f, "<= {q}"),
            Goal::AtLeast(q) => write!(f, ">= {q}"),
        }
    }
}

/// A figure, or why there is none.
pub type Measured = Result<Quantity, String>;

impl From<Quantity> for Measured {
    fn from(quantity: Quantity) -> Self {
        Ok(quantity)
    }
}

/// The unsigned integer at `path` (dot-separated) in the JSON that `source`
/// printed, or an error that names the field.
pub fn field_u64(json: &serde_json::Value, path: &str, source: &str) -> Result<u64, String> {
    let value = path.split('.').try_fold(json, |at, key| at.get(key));
    match value {
        None => Err(format!("field `{path}` is missing from `{source}`")),
        Some(value) => value.as_u64().ok_or_else(|| format!("field `{path}` in `{source}` is {value}, not a count")),
    }
}

#[derive(Debug, Default)]
pub struct Report {
    met: usize,
    missed: Vec<String>,
    errors: Vec<String>,
}

impl Report {
    /// Compares `measured` with `goal` and prints the verdict beside it.
    pub fn check(&mut self, what: &str, measured: impl Into<Measured>, goal: Goal) {
        match measured.into() {
            Ok(quantity) if goal.is_met(quantity) => {
                self.met += 1;
                println!("  met     {what}: {quantity} (goal {goal})");
            }
            Ok(quantity) => {
                self.missed.push(what.to_string());
                println!("  MISSED  {what}: {quantity} (goal {goal})");
            }
            Err(why) => {
                self.missed.push(what.to_string());
                println!("  MISSED  {what}: not measured: {why} (goal {goal})");
            }
        }
    }

    /// A figure without a goal.
    pub fn info(&mut self, what: &str, figure: impl fmt::Display) {
        println!("  info    {what}: {figure}");
    }

    /// A figure without a goal that could not be measured.
    pub fn error(&mut self, what: &str, why: impl fmt::Display) {
        self.errors.push(what.to_string());
        println!("  ERROR   {what}: not measured: {why}");
    }

    /// Prints the tally; the process's exit code: 1 if a goal was missed or
    /// a figure could not be measured, 0 otherwise.
    pub fn finish(&self) -> i32 {
        let goals = self.met + self.missed.len();
        println!("\n{goals} goals: {} met, {} MISSED", self.met, self.missed.len());
        for what in &self.missed {
            println!("  MISSED  {what}");
        }
        if !self.errors.is_empty() {
            println!("{} figures without a goal could not be measured", self.errors.len());
            for what in &self.errors {
                println!("  ERROR   {what}");
            }
        }
        i32::from(!self.missed.is_empty() || !self.errors.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_compare_in_their_direction_and_a_negative_overhead_meets_at_most() {
        let at_most = Goal::AtMost(Quantity::millis(0.3));
        assert!(at_most.is_met(Quantity::millis(0.3)));
        assert!(at_most.is_met(Quantity::millis(-0.05)));
        assert!(!at_most.is_met(Quantity::millis(0.31)));
        let at_least = Goal::AtLeast(Quantity::count(10_000));
        assert!(at_least.is_met(Quantity::count(10_000)));
        assert!(!at_least.is_met(Quantity::count(9_999)));
        assert_eq!(Quantity::millis(-0.05).to_string(), "-0.05 ms");
        assert_eq!(Quantity::millis(2_190.0).to_string(), "2.19 s");
    }

    #[test]
    fn a_missing_field_is_an_error_naming_it_and_a_miss_not_a_zero() {
        let status = serde_json::json!({ "probes": { "run": 12, "lateness_p50_us": 700 } });
        assert_eq!(field_u64(&status, "probes.run", "qu status --json"), Ok(12));
        let missing = field_u64(&status, "probes.lateness_p99_us", "qu status --json").unwrap_err();
        assert!(missing.contains("`probes.lateness_p99_us`") && missing.contains("missing"), "{missing}");
        let mut report = Report::default();
        report.check("p99", Err(missing), Goal::AtMost(Quantity::millis(50.0)));
        report.check("p50", Quantity::micros(700), Goal::AtMost(Quantity::millis(50.0)));
        assert_eq!(report.finish(), 1);
        let mut report = Report::default();
        report.check("p50", Quantity::micros(700), Goal::AtMost(Quantity::millis(50.0)));
        assert_eq!(report.finish(), 0);
    }
}
