//! Exponential backoff with jitter, for the agent's retries.

use std::time::Duration;

/// Exponential backoff with jitter.
#[derive(Debug)]
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    cur: Duration,
}

impl Backoff {
    pub(super) fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max, cur: min }
    }

    pub(super) fn reset(&mut self) {
        self.cur = self.min;
    }

    /// The next delay (between half and all of the current step), then doubles the step.
    pub(super) fn next_delay(&mut self) -> Duration {
        let d = self.cur.mul_f64(rand::random_range(0.5..=1.0));
        self.cur = (self.cur * 2).min(self.max);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[4] >= Duration::from_millis(200) && d[4] <= Duration::from_millis(400));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
