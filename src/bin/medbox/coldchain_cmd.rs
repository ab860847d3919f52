//! `medbox coldchain stats`: what a pharmacist asks of a logger file.

use crate::config_cmd::config_errors;
use crate::sim_cmd::opt;
use anyhow::{Context, Result};
use medbox::coldchain::ColdChainConfig;
use medbox::config;

pub(crate) fn print_coldchain(r: &medbox::coldchain::analysis::AnalysisReport) {
    println!(
        "  MKT {} °C   worst excursion {:.0} min   {} excursions   {} alarms",
        opt(r.mkt),
        r.worst_excursion_minutes,
        r.excursions.len(),
        r.alarms.len()
    );
    for x in &r.excursions {
        let end = x.end.map_or("still open".to_string(), |e| e.to_rfc3339());
        println!(
            "  excursion {}: {} → {} ({:.0} min), {:.2}–{:.2} °C, MKT {:.2} °C (24 h {:.2} °C)",
            x.id,
            x.start.to_rfc3339(),
            end,
            x.minutes,
            x.min,
            x.max,
            x.mkt,
            x.mkt_24h
        );
    }
    for a in &r.alarms {
        println!(
            "  alarm {} raised {} (condition since {}){}",
            a.alarm.code(),
            a.at.to_rfc3339(),
            a.since.to_rfc3339(),
            a.detail
                .as_deref()
                .map_or(String::new(), |d| format!(": {d}"))
        );
    }
}

pub(crate) fn coldchain_stats(
    csv: &std::path::Path,
    config: Option<&std::path::Path>,
    json: bool,
) -> Result<()> {
    let cfg = match config {
        Some(p) => {
            config::ApplianceConfig::load(p)
                .map_err(config_errors)?
                .coldchain
        }
        None => ColdChainConfig::default(),
    };
    let file =
        std::fs::File::open(csv).with_context(|| format!("cannot open {}", csv.display()))?;
    let read = medbox::coldchain::readings_csv::read_observations(std::io::BufReader::new(file))
        .with_context(|| csv.display().to_string())?;
    let mut report = medbox::coldchain::analysis::analyse(&cfg, read.observations);
    report.readings_out_of_order = read.out_of_order.len() as u64;
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "{}: {} valid readings, {} without a valid value",
        csv.display(),
        report.readings,
        report.rejected
    );
    println!(
        "  min {} °C  max {} °C  mean {} °C",
        opt(report.min),
        opt(report.max),
        opt(report.mean)
    );
    println!(
        "  in {:.1}–{:.1} °C: {:.0} min   out of range: {:.0} min   unknown: {:.0} min",
        cfg.range_min.0,
        cfg.range_max.0,
        report.minutes_in_range,
        report.minutes_out_of_range,
        report.minutes_unknown
    );
    if report.minutes_uncertain > 0.0 {
        println!(
            "  uncertain (the probes disagreed): {:.0} min",
            report.minutes_uncertain
        );
    }
    for (line, at) in &read.out_of_order {
        println!(
            "  line {line}: {} is not after the row before it: left out of the analysis",
            at.to_rfc3339()
        );
    }
    print_coldchain(&report);
    Ok(())
}
