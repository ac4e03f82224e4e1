//! The demo's answer: the top words and the run's figures, as tables or JSON.

use super::DemoArgs;
use comfy_table::{CellAlignment, Table};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What the run found, for [`print`].
pub(super) struct Outcome {
    /// Merged word counts.
    pub(super) words: BTreeMap<String, u64>,
    /// Merged total of words.
    pub(super) total_words: u64,
    /// Tasks submitted.
    pub(super) tasks: u64,
    /// Tasks that succeeded.
    pub(super) succeeded: u64,
    /// Attempts beyond the first, over all tasks.
    pub(super) retries: u64,
    /// The agent killed on the way and at what share done (percent).
    pub(super) killed: Option<(String, u64)>,
    /// From the submit to the last task finished.
    pub(super) duration: Duration,
    /// Corpus size.
    pub(super) corpus_bytes: u64,
    /// Where the corpus is.
    pub(super) corpus_path: PathBuf,
    /// Total words of the direct count.
    pub(super) direct_total: u64,
    /// How long the direct count took, s.
    pub(super) direct_secs: f64,
    /// Threads of the direct count.
    pub(super) threads: usize,
    /// The merged answer equals the direct count.
    pub(super) verified: bool,
    /// When the demo started.
    pub(super) started: Instant,
}

/// Prints the answer: JSON with `--json`, tables otherwise.
pub(super) fn print(args: &DemoArgs, o: &Outcome) -> anyhow::Result<()> {
    let merged_sorted = &o.words;
    let (merged_total, total, succeeded, retries) =
        (o.total_words, o.tasks, o.succeeded, o.retries);
    let (killed, duration, corpus_bytes, corpus_path) =
        (&o.killed, o.duration, o.corpus_bytes, &o.corpus_path);
    let (direct_total, direct_secs, threads, verified) =
        (o.direct_total, o.direct_secs, o.threads, o.verified);
    let started = o.started;
    let mut top: Vec<(&String, &u64)> = merged_sorted.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    top.truncate(10);
    let secs = duration.as_secs_f64().max(1e-9);
    let mb = corpus_bytes as f64 / (1024.0 * 1024.0);
    let killed_name = killed.as_ref().map(|k| k.0.clone());

    if args.json {
        let out = json!({
            "total_words": merged_total,
            "distinct_words": merged_sorted.len(),
            "top": top.iter().map(|(w, c)| json!([w, c])).collect::<Vec<_>>(),
            "tasks": total,
            "succeeded": succeeded,
            "nodes": args.agents,
            "retries": retries,
            "killed_agent": killed_name,
            "duration_ms": duration.as_millis() as u64,
            "tasks_per_sec": total as f64 / secs,
            "corpus_bytes": corpus_bytes,
            "corpus_mb": mb,
            "mb_per_sec": mb / secs,
            "direct_total_words": direct_total,
            "direct_count_ms": (direct_secs * 1000.0) as u64,
            "corpus": args.corpus_dir.as_ref().map(|_| corpus_path.to_string_lossy().into_owned()),
            "seed": args.seed,
            "verified": verified,
            "total_ms": started.elapsed().as_millis() as u64,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!();
        println!("The answer: the 10 most frequent words");
        let mut t = Table::new();
        t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED)
            .force_no_tty()
            .set_header(vec!["#", "word", "count", "share"]);
        for (i, (w, c)) in top.iter().enumerate() {
            t.add_row(vec![
                (i + 1).to_string(),
                (*w).clone(),
                group(**c),
                format!("{:.2}%", **c as f64 * 100.0 / merged_total.max(1) as f64),
            ]);
        }
        right_align(&mut t, &[0, 2, 3]);
        println!("{t}");
        println!(
            "total: {} words, {} distinct",
            group(merged_total),
            group(merged_sorted.len() as u64)
        );
        println!();
        let mut s = Table::new();
        s.load_style(comfy_table::presets::UTF8_FULL_CONDENSED)
            .force_no_tty()
            .set_header(vec!["", ""]);
        let killed_cell = match &killed {
            Some((name, at)) => format!("{name} (SIGKILL at {at}% done)"),
            None => "none".to_string(),
        };
        let rows: Vec<(&str, String)> = vec![
            ("tasks", format!("{total} ({succeeded} succeeded)")),
            (
                "nodes",
                format!(
                    "{} agent processes x capacity {}",
                    args.agents, args.capacity
                ),
            ),
            ("retries", retries.to_string()),
            ("agent killed", killed_cell),
            ("duration", format!("{secs:.2}s")),
            ("tasks/s", format!("{:.1}", total as f64 / secs)),
            ("corpus", format!("{mb:.1} MiB")),
            ("throughput", format!("{:.1} MiB/s", mb / secs)),
            (
                "direct check (no muster)",
                format!("{direct_secs:.2}s on {threads} threads"),
            ),
        ];
        for (k, v) in rows {
            s.add_row(vec![k.to_string(), v]);
        }
        println!("{s}");
        if verified {
            println!(
                "verified: the merged answer equals a single-process count of the same corpus ({} words)",
                group(direct_total)
            );
        }
    }
    Ok(())
}

fn right_align(t: &mut Table, cols: &[usize]) {
    for (i, col) in t.column_iter_mut().enumerate() {
        if cols.contains(&i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// Digits grouped by thousands: 12,345,678.
pub(super) fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_digits() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(12_345_678), "12,345,678");
    }
}
