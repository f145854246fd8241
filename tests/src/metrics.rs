//! Scraping the daemon's `/metrics` from inside a namespace, parsed by a
//! Prometheus text-format parser, so tests compare numbers, not text.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};

use crate::Netns;

/// A sample's labels.
pub type Labels = BTreeMap<String, String>;

/// One scrape: every sample by name and labels, and the raw text.
#[derive(Clone, Debug)]
pub struct Scrape {
    pub text: String,
    samples: BTreeMap<String, Vec<(Labels, f64)>>,
}

impl Scrape {
    /// The value of sample `name` whose labels include all of `labels`
    /// (the first such sample).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(name)?.iter().find_map(|(have, value)| {
            labels
                .iter()
                .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
                .then_some(*value)
        })
    }

    /// The sum of every sample `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples.get(name).map_or(0.0, |all| {
            all.iter()
                .filter(|(have, _)| {
                    labels
                        .iter()
                        .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|(_, value)| value)
                .sum()
        })
    }

    /// Every sample name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.samples.keys().map(String::as_str)
    }

    /// The labels of every sample `name`.
    pub fn labels(&self, name: &str) -> Vec<Labels> {
        self.samples
            .get(name)
            .map(|all| all.iter().map(|(l, _)| l.clone()).collect())
            .unwrap_or_default()
    }
}

/// GETs `http://addr/metrics` from `ns` and parses it.
pub fn scrape(ns: &Netns, addr: SocketAddr) -> Result<Scrape> {
    let url = format!("http://{addr}/metrics");
    let text = ns
        .run(|| -> Result<(String, String)> {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .into();
            let mut response = agent.get(&url).call()?;
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            Ok((content_type, response.body_mut().read_to_string()?))
        })?
        .with_context(|| format!("cannot scrape {url}"))?;
    let (content_type, text) = text;
    anyhow::ensure!(
        content_type.starts_with("application/openmetrics-text"),
        "{url}: content type {content_type:?}"
    );
    parse(text)
}

/// Parses an exposition.
pub fn parse(text: String) -> Result<Scrape> {
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .context("the exposition does not parse")?;
    let mut samples: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for sample in parsed.samples {
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            other => anyhow::bail!("{}: unexpected sample {other:?}", sample.metric),
        };
        let labels = sample
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        samples
            .entry(sample.metric)
            .or_default()
            .push((labels, value));
    }
    Ok(Scrape { text, samples })
}

/// The metric names a document lists: the first cell of every table row
/// that starts with `` | `balancer_ `` (docs/observability.md).
pub fn documented(doc: &str) -> Vec<String> {
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("balancer_"))
        .map(str::to_owned)
        .collect()
}

/// The metrics of `doc` a daemon without `[section]` exports: those whose
/// meaning starts "with `[section]` only" left out.
pub fn documented_without(doc: &str, section: &str) -> Vec<String> {
    let only = format!("| with `[{section}]` only");
    doc.lines()
        .filter(|l| !l.contains(&only))
        .flat_map(documented)
        .collect()
}

/// The metrics of docs/observability.md, as embedded at build time.
pub const OBSERVABILITY_DOC: &str = include_str!("../../docs/observability.md");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_metrics_are_the_table_rows() {
        let names = documented(OBSERVABILITY_DOC);
        assert!(names.len() >= 15, "{names:?}");
        assert!(names.contains(&"balancer_vip_packets_total".to_owned()));
        assert!(names.contains(&"balancer_flow_table_capacity".to_owned()));
        assert!(names.iter().all(|n| !n.contains(' ')), "{names:?}");
    }
}
