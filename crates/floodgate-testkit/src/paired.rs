//! Paired rounds, for benchmarks that compare ways of doing one thing in
//! the same run: each turn times every way once, in turn, so load that
//! drifts during the run weighs on all of them alike.

use std::time::Duration;

/// The median of `xs` (the upper one of an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Per way: the median time per operation (ns) over `turns`, each turn
/// timing every way once over `per_turn` operations, and the median over
/// turns of that way's time over the first way's in the same turn.
pub fn summarise<const WAYS: usize>(
    turns: &[[Duration; WAYS]],
    per_turn: usize,
) -> Vec<(f64, f64)> {
    (0..WAYS)
        .map(|w| {
            let ns = median(
                turns
                    .iter()
                    .map(|t| t[w].as_nanos() as f64 / per_turn as f64)
                    .collect(),
            );
            let ratio = median(
                turns
                    .iter()
                    .map(|t| t[w].as_secs_f64() / t[0].as_secs_f64())
                    .collect(),
            );
            (ns, ratio)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios_of_paired_turns() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        let ms = Duration::from_millis;
        let turns = [[ms(10), ms(20)], [ms(20), ms(30)], [ms(10), ms(30)]];
        let row = summarise(&turns, 10);
        assert_eq!(row[0], (1_000_000.0, 1.0));
        assert_eq!(row[1], (3_000_000.0, 2.0));
    }
}
