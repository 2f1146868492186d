//! Where a consumer goes when its position is outside the log (pure).

/// What to do with a position the broker says is out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Retention removed `lost` records before they were processed: skip to the log start.
    Skip { to: i64, lost: i64 },
    /// Past the end: the topic was recreated or truncated; start over at its start.
    Restart { to: i64 },
    /// Inside the log after all (a race with the broker's view): fetch again after a pause.
    Keep,
}

pub fn place(position: i64, log_start: i64, log_end: i64) -> Placement {
    if position < log_start {
        Placement::Skip { to: log_start, lost: log_start - position }
    } else if position > log_end {
        Placement::Restart { to: log_start }
    } else {
        Placement::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_the_start_skips_and_counts_the_loss() {
        assert_eq!(place(10, 250, 900), Placement::Skip { to: 250, lost: 240 });
    }

    #[test]
    fn past_the_end_restarts_at_the_new_logs_start() {
        // A recreated topic: its log starts again at 0 and ends far below our position.
        assert_eq!(place(5_000, 0, 12), Placement::Restart { to: 0 });
    }

    #[test]
    fn inside_the_log_keeps_the_position() {
        assert_eq!(place(250, 250, 900), Placement::Keep);
        assert_eq!(place(900, 250, 900), Placement::Keep, "the end itself is where the next record goes");
    }
}
