//! The `skewless` command line: a thin edge over the library. Errors become messages
//! and exit codes here and nowhere else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use chrono::NaiveDate;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use skewless::config::Config;
use skewless::definitions::DefinitionErrors;
use skewless::generate::{GenerateOptions, generate};
use skewless::ingest::{IngestError, ingest_month};
use skewless::offline::check_sources;
use skewless::registry::{Plan, Registry};
use skewless::repo::{FeatureRepo, RepoError};

/// Exit codes: stable, documented in `--help`, and meant for scripts.
mod exit {
    /// Unexpected failure (a bug, or I/O outside the feature repo).
    pub const FAILURE: u8 = 1;
    /// Invalid configuration or feature definitions.
    pub const INVALID_DEFINITIONS: u8 = 3;
    /// Invalid input data (a CSV cell, a request).
    pub const INVALID_INPUT: u8 = 4;
    /// The database refused or is unreachable.
    pub const DATABASE: u8 = 5;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  unexpected failure
  2  wrong command-line usage
  3  invalid configuration or feature definitions (nothing was changed)
  4  invalid input data (nothing was changed)
  5  database error or database unreachable (nothing was changed)

Configuration: <repo>/feature_store.yaml; any key can be overridden with
SKEWLESS_<KEY>, nesting with __ (SKEWLESS_SERVER__ADMIN_TOKEN=...), and
DATABASE_URL replaces both stores' connection. Logs: RUST_LOG=skewless=debug.";

#[derive(Parser)]
#[command(
    name = "skewless",
    version,
    about = "A feature store server: Feast-style definitions, point-in-time training sets, online serving.",
    after_help = EXIT_CODES
)]
struct Cli {
    /// The feature repo: the folder holding feature_store.yaml and the definition files.
    #[arg(
        long,
        global = true,
        default_value = "feature_repo",
        value_name = "DIR"
    )]
    repo: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load one month of StreamFlow CSVs into the offline store, stamped with its as_of date.
    ///
    /// The six files (users, subscriptions, usage_agg_30d, payments_agg_90d,
    /// support_agg_90d, labels) are validated, bulk-loaded with COPY into the raw tables,
    /// and stamped into the *_snapshots tables keyed by (user_id, as_of), in one
    /// transaction. Ingesting the same month again changes nothing.
    #[command(after_help = EXIT_CODES)]
    Ingest {
        /// The month folder holding the six CSV files.
        #[arg(long, value_name = "DIR")]
        seeds: PathBuf,
        /// The snapshot date of this month (YYYY-MM-DD).
        #[arg(long, value_name = "DATE")]
        as_of: NaiveDate,
    },
    /// Show what `apply` would change in the registry and the online store.
    #[command(after_help = EXIT_CODES)]
    Plan,
    /// Validate the definitions against the database, then register them and create,
    /// rebuild or drop online tables, all in one transaction.
    #[command(after_help = EXIT_CODES)]
    Apply,
    /// List what is registered.
    #[command(visible_alias = "ls", after_help = EXIT_CODES)]
    Registry,
    /// Write deterministic StreamFlow-shaped month folders (month_000, month_001, ...).
    #[command(after_help = EXIT_CODES)]
    Generate {
        /// Number of users.
        #[arg(long, default_value_t = 7043)]
        users: u64,
        /// Number of months; month k is stamped at the end of the k-th month after --first-as-of.
        #[arg(long, default_value_t = 2)]
        months: u32,
        /// Output folder.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Random seed: the same seed gives byte-identical files.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// as_of of month_000.
        #[arg(long, default_value = "2024-01-31", value_name = "DATE")]
        first_as_of: NaiveDate,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "skewless=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Maps an error to its exit code by what caused it.
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<DefinitionErrors>() || cause.is::<skewless::config::ConfigError>() {
            return exit::INVALID_DEFINITIONS;
        }
        if let Some(repo) = cause.downcast_ref::<RepoError>() {
            return match repo {
                RepoError::Io { .. } => exit::FAILURE,
                _ => exit::INVALID_DEFINITIONS,
            };
        }
        if let Some(ingest) = cause.downcast_ref::<IngestError>() {
            return match ingest {
                IngestError::Invalid(_) => exit::INVALID_INPUT,
                IngestError::Io { .. } => exit::FAILURE,
                IngestError::Database { .. } => exit::DATABASE,
            };
        }
        if cause.is::<sqlx::Error>() || cause.is::<skewless::registry::RegistryError>() {
            return exit::DATABASE;
        }
    }
    exit::FAILURE
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Ingest { seeds, as_of } => ingest(&cli.repo, &seeds, as_of).await,
        Command::Plan => plan_or_apply(&cli.repo, false).await,
        Command::Apply => plan_or_apply(&cli.repo, true).await,
        Command::Registry => list_registry(&cli.repo).await,
        Command::Generate {
            users,
            months,
            out,
            seed,
            first_as_of,
        } => {
            let progress = bar(users, "generating users");
            let summary = generate(
                &GenerateOptions {
                    users,
                    months,
                    out: out.clone(),
                    seed,
                    first_as_of,
                },
                Some(&progress),
            )?;
            progress.finish_and_clear();
            for (k, as_of) in summary.as_of.iter().enumerate() {
                println!(
                    "  {}  as_of {as_of}",
                    out.join(format!("month_{k:03}")).display()
                );
            }
            println!(
                "[OK] Wrote {} users x {} months to {}",
                summary.users,
                summary.months,
                out.display()
            );
            Ok(())
        }
    }
}

fn bar(len: u64, message: &'static str) -> ProgressBar {
    let progress = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    progress.set_message(message);
    progress
}

fn bytes_bar(message: &'static str) -> ProgressBar {
    let progress = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    progress.set_message(message);
    progress
}

async fn ingest(repo: &Path, seeds: &Path, as_of: NaiveDate) -> Result<()> {
    let config = Config::load(repo)?;
    let pool = config
        .offline_pool()
        .await
        .context("cannot connect to the offline store")?;
    let progress = bytes_bar("ingesting");
    let report = ingest_month(
        &pool,
        &config.offline_store.db_schema,
        seeds,
        as_of,
        &progress,
    )
    .await?;
    for f in &report.files {
        println!(
            "  {:<22} {:>9} rows  {:>9} raw changed  {:>9} snapshot rows changed",
            f.file, f.rows, f.raw_changed, f.snapshot_changed
        );
    }
    if !report.raw_updated {
        println!("  (a newer month is already ingested: raw tables kept their newer values)");
    }
    let changed = report.changed_rows();
    if changed == 0 {
        println!(
            "[OK] {} as of {as_of}: already ingested, nothing changed",
            seeds.display()
        );
    } else {
        println!(
            "[OK] Ingested {} as of {as_of}: {changed} rows written",
            seeds.display()
        );
    }
    Ok(())
}

async fn plan_or_apply(repo: &Path, apply: bool) -> Result<()> {
    let repo = FeatureRepo::load(repo)?;
    let offline = repo
        .config
        .offline_pool()
        .await
        .context("cannot connect to the offline store")?;
    check_sources(&offline, &repo.definitions).await?;
    let online = repo
        .config
        .online_pool()
        .await
        .context("cannot connect to the online store")?;
    let registry = Registry::new(online, &repo.config);
    let plan: Plan = if apply {
        registry.apply(&repo.config, &repo.definitions).await?
    } else {
        registry.plan(&repo.config, &repo.definitions).await?
    };
    if apply {
        println!("Applying changes for project {}", repo.config.project);
        print!("{}", plan.render(true));
    } else {
        print!("{}", plan.render(false));
        if !plan.is_empty() {
            println!("\nRun `skewless apply` to make these changes.");
        }
    }
    Ok(())
}

async fn list_registry(repo: &Path) -> Result<()> {
    let config = Config::load(repo)?;
    let online = config
        .online_pool()
        .await
        .context("cannot connect to the online store")?;
    let registry = Registry::new(online, &config);
    let objects = registry.list().await?;
    if objects.is_empty() {
        println!(
            "Nothing is registered for project {} (run `skewless apply`).",
            config.project
        );
        return Ok(());
    }
    println!("{:<16} {:<28} {:>7}", "KIND", "NAME", "VERSION");
    for (object, version) in objects {
        println!("{:<16} {:<28} {:>7}", object.noun, object.name, version);
    }
    Ok(())
}
