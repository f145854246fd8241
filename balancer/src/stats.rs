//! Arithmetic over the datapath's counters shared by the daemon (`vip
//! show`) and the CLI (`stats --watch`). Pure logic.

/// Each backend's share of its VIP's new flows over an interval, in
/// percent, from each backend's new-flow delta. Unknown (None) where the
/// delta is unknown (a backend that was not there at the interval's
/// start), and for all when the known deltas sum to zero: without new
/// flows there is no share to speak of. The known shares add up to 100.
pub fn shares(deltas: &[Option<u64>]) -> Vec<Option<f64>> {
    let total: u64 = deltas.iter().flatten().sum();
    deltas
        .iter()
        .map(|delta| {
            let delta = (*delta)?;
            (total > 0).then(|| delta as f64 * 100.0 / total as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_percent_of_the_known_sum_and_absent_without_flows() {
        assert_eq!(
            shares(&[Some(1), Some(3), Some(0), None]),
            vec![Some(25.0), Some(75.0), Some(0.0), None]
        );
        assert_eq!(shares(&[Some(0), None]), vec![None, None]);
        assert_eq!(shares(&[]), Vec::<Option<f64>>::new());
    }
}
