//! The supervising actor of one tier's stages: told when a consumer or the producer fails
//! (they restart themselves under `actix::Supervisor` after a capped backoff), it counts the
//! restarts and turns a stage that keeps failing into a health problem.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::messages::StageExited;
use crate::observe::stats::TierStats;

/// This many stage failures within `WINDOW` make the tier unhealthy.
pub const FAILURES_UNHEALTHY: usize = 5;
pub const WINDOW: Duration = Duration::from_secs(60);

pub struct TierSupervisor {
    tier: String,
    stats: Arc<TierStats>,
    recent: VecDeque<Instant>,
}

impl TierSupervisor {
    pub fn new(tier: &str, stats: Arc<TierStats>) -> Self {
        Self { tier: tier.to_string(), stats, recent: VecDeque::new() }
    }

    fn forget_old(&mut self) {
        while self.recent.front().is_some_and(|t| t.elapsed() > WINDOW) {
            self.recent.pop_front();
        }
        if self.recent.len() < FAILURES_UNHEALTHY && self.stats.clear_problem("restarts") {
            tracing::info!(tier = %self.tier, "stages stable again");
        }
    }
}

impl Actor for TierSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_secs(5), |act, _| act.forget_old());
    }
}

/// Ends the supervisor with its tier (its interval would otherwise keep it alive).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for TierSupervisor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<StageExited> for TierSupervisor {
    type Result = ();
    fn handle(&mut self, msg: StageExited, _ctx: &mut Self::Context) {
        self.stats.restarts.fetch_add(1, Ordering::Relaxed);
        self.recent.push_back(Instant::now());
        self.forget_old();
        tracing::warn!(tier = %self.tier, stage = %msg.stage, "stage failed ({}); restarting it after a backoff", msg.reason);
        if self.recent.len() >= FAILURES_UNHEALTHY {
            let _ = self.stats.set_problem(
                "restarts",
                format!(
                    "{} stage failures in the last {WINDOW:?} (last: {}: {})",
                    self.recent.len(),
                    msg.stage,
                    msg.reason
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_counted_and_repeated_failures_turn_unhealthy() {
        let stats = Arc::new(TierStats::default());
        let sys = actix::System::new();
        sys.block_on(async {
            let sup = TierSupervisor::new("edge", Arc::clone(&stats)).start();
            for i in 0..FAILURES_UNHEALTHY {
                let exit = StageExited { stage: "consumer t/0".into(), reason: format!("fault {i}") };
                sup.send(exit).await.expect("delivered");
                let problems = stats.problems(Duration::ZERO);
                if i + 1 < FAILURES_UNHEALTHY {
                    assert!(problems.is_empty(), "{i}: {problems:?}");
                } else {
                    assert_eq!(problems.len(), 1);
                    assert!(
                        problems[0].starts_with("5 stage failures in the last 60s (last: consumer t/0: fault 4)"),
                        "{problems:?}"
                    );
                }
            }
        });
        assert_eq!(stats.restarts.load(Ordering::Relaxed), FAILURES_UNHEALTHY as u64);
    }
}
