//! Which rate to try next, and whether a step was sustained.
//!
//! The ladder walks the `--steps` rates upward until one is not sustained,
//! then bisects between that rate and the last sustained one `--refine`
//! times, so the reported ceiling is finer than the step list.

/// The rates one load is stepped through.
#[derive(Debug, Clone)]
pub struct Ladder {
    steps: Vec<u64>,
    next_step: usize,
    refine_left: u32,
    best: Option<u64>,
    first_bad: Option<u64>,
}

/// Bisection stops when the interval is narrower than this many events/s.
const FINEST: u64 = 1000;

impl Ladder {
    pub fn new(mut steps: Vec<u64>, refine: u32) -> Ladder {
        steps.retain(|r| *r > 0);
        steps.sort_unstable();
        steps.dedup();
        Ladder {
            steps,
            next_step: 0,
            refine_left: refine,
            best: None,
            first_bad: None,
        }
    }

    /// The next rate to try, or `None` when the ladder is done.
    pub fn next(&self) -> Option<u64> {
        let Some(bad) = self.first_bad else {
            return self.steps.get(self.next_step).copied();
        };
        let good = self.best.unwrap_or(0);
        if self.refine_left == 0 || bad.saturating_sub(good) < 2 * FINEST {
            return None;
        }
        // Round to whole thousands so the table stays readable.
        let mid = (good + bad) / 2 / FINEST * FINEST;
        (mid > good && mid < bad).then_some(mid)
    }

    /// Records the outcome of the rate [`Ladder::next`] gave.
    pub fn record(&mut self, rate: u64, sustained: bool) {
        if self.first_bad.is_none() {
            self.next_step += 1;
        } else {
            self.refine_left = self.refine_left.saturating_sub(1);
        }
        if sustained {
            self.best = Some(self.best.map_or(rate, |b| b.max(rate)));
        } else {
            self.first_bad = Some(self.first_bad.map_or(rate, |b| b.min(rate)));
        }
    }
}

/// The limits a step must stay within to count as sustained.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_p99_ms: f64,
    pub min_achieved: f64,
}

/// What [`judge`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub offered_per_sec: f64,
    pub stored_per_sec: f64,
    pub lost: u64,
    pub lag_samples: u64,
    pub p99_ms: f64,
}

/// `Ok` when the step was sustained, else why not, in words for the table.
pub fn judge(o: &Outcome, l: &Limits) -> Result<(), String> {
    let mut why = Vec::new();
    let achieved = o.stored_per_sec / o.offered_per_sec.max(1.0);
    if achieved < l.min_achieved {
        why.push(format!("stored {:.0}% of offered", achieved * 100.0));
    }
    if o.lost > 0 {
        why.push(format!("{} events refused or failed", o.lost));
    }
    if o.lag_samples == 0 {
        why.push("nothing rendered or read back".to_string());
    } else if o.p99_ms > l.max_p99_ms {
        why.push(format!("p99 {:.0} ms > {:.0} ms", o.p99_ms, l.max_p99_ms));
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(ladder: &mut Ladder, ceiling: u64) -> Vec<u64> {
        let mut tried = Vec::new();
        while let Some(r) = ladder.next() {
            tried.push(r);
            ladder.record(r, r <= ceiling);
        }
        tried
    }

    #[test]
    fn steps_up_until_a_rate_fails_then_bisects() {
        let mut l = Ladder::new(vec![10_000, 20_000, 40_000, 60_000], 2);
        let tried = walk(&mut l, 33_000);
        assert_eq!(tried, vec![10_000, 20_000, 40_000, 30_000, 35_000]);
    }

    #[test]
    fn a_ladder_that_never_fails_ends_at_its_top_step() {
        let mut l = Ladder::new(vec![20_000, 10_000, 20_000], 3);
        assert_eq!(walk(&mut l, u64::MAX), vec![10_000, 20_000]);
    }

    #[test]
    fn failing_the_first_step_bisects_below_it() {
        let mut l = Ladder::new(vec![10_000, 20_000], 1);
        assert_eq!(walk(&mut l, 6_000), vec![10_000, 5_000]);
    }

    #[test]
    fn without_refinement_the_first_failure_ends_the_ladder() {
        let mut l = Ladder::new(vec![10_000, 20_000, 40_000], 0);
        assert_eq!(walk(&mut l, 15_000), vec![10_000, 20_000]);
    }

    fn outcome() -> Outcome {
        Outcome {
            offered_per_sec: 10_000.0,
            stored_per_sec: 9_990.0,
            lost: 0,
            lag_samples: 100,
            p99_ms: 80.0,
        }
    }

    const LIMITS: Limits = Limits {
        max_p99_ms: 250.0,
        min_achieved: 0.95,
    };

    #[test]
    fn a_step_within_limits_is_sustained() {
        assert_eq!(judge(&outcome(), &LIMITS), Ok(()));
    }

    #[test]
    fn lag_shortfall_loss_and_silence_each_fail_a_step() {
        let slow = Outcome {
            p99_ms: 900.0,
            ..outcome()
        };
        assert!(judge(&slow, &LIMITS).is_err_and(|w| w.contains("p99 900 ms")));
        let short = Outcome {
            stored_per_sec: 7_000.0,
            ..outcome()
        };
        assert!(judge(&short, &LIMITS).is_err_and(|w| w.contains("stored 70%")));
        let lossy = Outcome {
            lost: 3,
            ..outcome()
        };
        assert!(judge(&lossy, &LIMITS).is_err_and(|w| w.contains("3 events")));
        let silent = Outcome {
            lag_samples: 0,
            ..outcome()
        };
        assert!(judge(&silent, &LIMITS).is_err_and(|w| w.contains("nothing rendered")));
    }
}
