//! `anygate-bench-report`: rewrites the generated part of BENCHMARKS.md
//! (between its `deploy/bench` markers) from the JSON files one
//! `deploy/bench` run wrote. Refuses when a file is missing or does not
//! parse, so the tables never mix runs or show blanks.

use clap::Parser;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "BENCHMARKS.md's tables from deploy/bench's JSON results")]
struct Args {
    /// The directory deploy/bench wrote (meta.json, writes.json, ...).
    #[arg(long)]
    results: PathBuf,
    /// The file to update in place.
    #[arg(long, default_value = "BENCHMARKS.md")]
    benchmarks: PathBuf,
    /// Print the generated part instead of writing the file.
    #[arg(long)]
    print: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let results = anygate_chaos::report::load(&a.results)?;
    let generated = anygate_chaos::report::render(&results);
    if a.print {
        println!("{generated}");
        return Ok(());
    }
    let doc = std::fs::read_to_string(&a.benchmarks)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.benchmarks.display()))?;
    let out = anygate_chaos::report::splice(&doc, &generated)?;
    std::fs::write(&a.benchmarks, out)?;
    println!(
        "{} updated from {} (commit {})",
        a.benchmarks.display(),
        a.results.display(),
        results.meta.commit
    );
    Ok(())
}
