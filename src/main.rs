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
use skewless::plugins::PluginStore;
use skewless::registry::{Plan, Registry};
use skewless::repo::{FeatureRepo, RepoError};

/// mimalloc: the server allocates small, short-lived buffers per request, where glibc's
/// malloc showed up at ~10% of the server's CPU under load. Built with `no_thp`: asked for
/// transparent huge pages, it had the kernel zero a 2 MiB page for each thread's first
/// allocations — half of a short command's CPU samples (`perf`: `clear_page_erms`; ~3 ms
/// of a 50 ms training set) and +10 MB of server RSS, for no throughput gain.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Validate a plugin (.wasm component) in the sandbox, store it in the registry, and
    /// make it the active version: every on-demand view using it without a pin switches
    /// to it, on every server. The same bytes again change nothing.
    #[command(after_help = EXIT_CODES)]
    Add { file: PathBuf },
    /// List the stored plugins, their versions, the active one and the views using them.
    #[command(visible_alias = "ls", after_help = EXIT_CODES)]
    List,
    /// Make a stored version active (roll back or forward); VERSION may be a sha256.
    #[command(after_help = EXIT_CODES)]
    Activate { name: String, version: String },
    /// Delete a stored version (refused while a view runs it); VERSION may be a sha256.
    #[command(after_help = EXIT_CODES)]
    Delete { name: String, version: String },
    /// Scaffold a plugin crate in the plugins workspace: it builds with `cargo build
    /// --release --target wasm32-wasip2` and passes its own test as is.
    #[command(after_help = EXIT_CODES)]
    New {
        name: String,
        /// The plugins workspace.
        #[arg(long, default_value = "plugins")]
        dir: PathBuf,
    },
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
    /// Manage transformation plugins in the registry: upload, list, activate, delete.
    #[command(subcommand)]
    Plugin(PluginCommand),
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
    /// Set everything up and serve: ingest the month folders under --seeds (generating
    /// demo data there first if it holds none), apply, materialize every month, serve.
    ///
    /// What `docker compose up` runs. Every step is idempotent, so running it again
    /// against the same database changes nothing and serves again.
    #[command(after_help = EXIT_CODES)]
    Demo {
        /// Folder of month folders (month_000 = 2024-01-31, month_001 = 2024-02-29, ...).
        #[arg(long, default_value = "data/seeds", value_name = "DIR")]
        seeds: PathBuf,
        /// Users to generate when --seeds holds no month folder.
        #[arg(long, default_value_t = 7043)]
        users: u64,
        /// Address to serve on (default: server.bind).
        #[arg(long, value_name = "HOST:PORT")]
        addr: Option<std::net::SocketAddr>,
        /// Development mode for the server (see `serve --dev`).
        #[arg(long)]
        dev: bool,
        /// Stop after materializing (do not serve).
        #[arg(long)]
        no_serve: bool,
    },
    /// Run the feature server (HTTP API; OpenAPI document at /openapi.json).
    #[command(after_help = EXIT_CODES)]
    Serve {
        /// Address to listen on (default: server.bind from the config, 127.0.0.1:8000).
        #[arg(long, value_name = "HOST:PORT")]
        addr: Option<std::net::SocketAddr>,
        /// Development mode: mutating routes need no admin token on a loopback address, and
        /// the feature repo (YAML files, plugins folder) is watched and hot-reloaded.
        #[arg(long)]
        dev: bool,
    },
    /// Print the online features of one entity (what GET /features/{id} serves).
    #[command(after_help = EXIT_CODES)]
    Online {
        /// The entity key, e.g. a user_id.
        id: String,
        /// Features as view:feature, comma-separated.
        #[arg(long, value_delimiter = ',', value_name = "VIEW:FEATURE,...")]
        features: Vec<String>,
        /// A feature service (default: server.default_feature_service).
        #[arg(long, value_name = "NAME")]
        feature_service: Option<String>,
    },
    /// Build a point-in-time correct training set (Feast's get_historical_features).
    ///
    /// For each entity row (user_id, event_timestamp), every requested feature takes the
    /// newest source row at or before event_timestamp (within the view's ttl). The join
    /// runs inside PostgreSQL as one query; rows stream to the file, which appears only
    /// once complete. Uses the definitions the registry holds (run `skewless apply`).
    #[command(after_help = EXIT_CODES)]
    Historical(HistoricalArgs),
    /// Copy the newest feature values of a time window from the offline sources into the
    /// online tables, for the views the registry holds (run `skewless apply` first).
    ///
    /// Per view, in one transaction inside PostgreSQL: the newest source row per entity
    /// with START <= timestamp_field <= END (both inclusive, as in Feast) replaces the
    /// online row only if it is newer, and the view's watermark moves up to END.
    /// Materializing the same window again writes nothing; an older window never
    /// overwrites newer values. Times without an offset are UTC.
    #[command(after_help = EXIT_CODES)]
    Materialize {
        /// Start of the window, inclusive: 2024-01-01, 2024-01-01T00:00:00 (UTC) or RFC 3339.
        #[arg(value_parser = skewless::online::materialize::parse_timestamp)]
        start: chrono::DateTime<chrono::Utc>,
        /// End of the window, inclusive (same forms).
        #[arg(value_parser = skewless::online::materialize::parse_timestamp)]
        end: chrono::DateTime<chrono::Utc>,
        /// Only these online feature views (comma-separated; default: all).
        #[arg(long, value_delimiter = ',', value_name = "VIEW,...")]
        views: Vec<String>,
    },
    /// Materialize each view from where its last materialization ended up to END
    /// (a view never materialized starts at END - ttl, or at the beginning without ttl).
    #[command(after_help = EXIT_CODES)]
    MaterializeIncremental {
        /// End of the window, inclusive: 2024-02-01, 2024-02-01T00:00:00 (UTC) or RFC 3339.
        #[arg(value_parser = skewless::online::materialize::parse_timestamp)]
        end: chrono::DateTime<chrono::Utc>,
        /// Only these online feature views (comma-separated; default: all).
        #[arg(long, value_delimiter = ',', value_name = "VIEW,...")]
        views: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server logs its requests; one-shot commands speak through stdout and exit codes.
    let default_filter = match cli.command {
        Command::Serve { .. } => "skewless=info,tower_http=info,warn",
        _ => "skewless=warn,warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
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

/// Every plugin problem found by `plan`/`apply`, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PluginProblems(String);

/// Maps an error to its exit code by what caused it.
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(m) = cause.downcast_ref::<skewless::online::MaterializeError>() {
            use skewless::online::MaterializeError as M;
            return match m {
                M::UnknownViews { .. } | M::InvalidWindow { .. } => 2, // wrong usage
                M::Database { .. } | M::Registry(_) => exit::DATABASE,
                _ => exit::INVALID_DEFINITIONS,
            };
        }
        if let Some(h) = cause.downcast_ref::<skewless::offline::HistoricalError>() {
            use skewless::offline::HistoricalError as H;
            return match h {
                H::Resolve(_) | H::Entities(_) => exit::INVALID_INPUT,
                H::Database(_) | H::Query(_) | H::Unavailable(_) => exit::DATABASE,
                H::Decode(_) | H::Plan(_) | H::Transform(_) => exit::FAILURE,
            };
        }
        if cause.is::<skewless::plugins::ScaffoldError>() {
            return exit::INVALID_INPUT;
        }
        if cause.is::<PluginProblems>() {
            return exit::INVALID_DEFINITIONS;
        }
        if let Some(a) = cause.downcast_ref::<skewless::repo::ApplyError>() {
            use skewless::repo::ApplyError as A;
            return match a {
                A::Definitions(_) | A::Plugins(_) => exit::INVALID_DEFINITIONS,
                A::Registry(_) => exit::DATABASE,
            };
        }
        if cause.is::<skewless::definitions::ResolveError>()
            || cause.is::<skewless::online::read::OnlineReadError>()
        {
            return exit::INVALID_INPUT;
        }
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
        Command::Plugin(command) => plugin(&cli.repo, command).await,
        Command::Demo {
            seeds,
            users,
            addr,
            dev,
            no_serve,
        } => {
            demo(&cli.repo, &seeds, users).await?;
            if no_serve {
                Ok(())
            } else {
                serve(&cli.repo, addr, dev).await
            }
        }
        Command::Serve { addr, dev } => serve(&cli.repo, addr, dev).await,
        Command::Online {
            id,
            features,
            feature_service,
        } => online(&cli.repo, &id, &features, feature_service.as_deref()).await,
        Command::Historical(args) => historical(&cli.repo, args).await,
        Command::Materialize { start, end, views } => {
            materialize_views(&cli.repo, Some(start), end, &views).await
        }
        Command::MaterializeIncremental { end, views } => {
            materialize_views(&cli.repo, None, end, &views).await
        }
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
    let registry = open_registry(&repo.config).await?;
    let store = PluginStore::new(&repo.config.plugins, &repo.dir)?;
    let plan: Plan = repo.apply(&offline, &registry, &store, apply).await?;
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

/// `plugin add|list|activate|delete`: the registry's plugin versions, from the CLI.
async fn plugin(repo: &Path, command: PluginCommand) -> Result<()> {
    use skewless::registry::{StoredPlugin, Upload, VersionSelector};
    if let PluginCommand::New { name, dir } = &command {
        let created = skewless::plugins::scaffold(dir, name)?;
        println!("[OK] Created plugin crate {} (added to {}/Cargo.toml)", created.display(), dir.display());
        println!("  cd {} && cargo test -p {name} && cargo build --release --target wasm32-wasip2", dir.display());
        return Ok(());
    }
    let config = Config::load(repo)?;
    let registry = open_registry(&config).await?;
    let switched = |views: &[String]| {
        if views.is_empty() {
            String::new()
        } else {
            format!("; now running in {}", views.join(", "))
        }
    };
    match command {
        PluginCommand::Add { file } => {
            let bytes = std::fs::read(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let plugin = PluginStore::new(&config.plugins, repo)?
                .load_bytes(&file.display().to_string(), &bytes)
                .await
                .map_err(|e| PluginProblems(e.to_string()))?;
            let stored = StoredPlugin {
                sha256: plugin.sha256().to_string(),
                info: plugin.info().clone(),
                bytes,
            };
            let (outcome, views) = registry
                .upload_plugin(&stored)
                .await
                .map_err(|e| PluginProblems(e.to_string()))?;
            let what = match outcome {
                Upload::Created => "Stored and activated",
                Upload::Unchanged => "Already stored (nothing changed):",
            };
            println!(
                "[OK] {what} plugin {} {} (sha256 {}){}",
                stored.info.name,
                stored.info.version,
                stored.sha256,
                switched(&views)
            );
        }
        PluginCommand::List => {
            let plugins = registry
                .list_plugins()
                .await
                .map_err(|e| PluginProblems(e.to_string()))?;
            if plugins.is_empty() {
                println!("No plugins are stored for project {}.", config.project);
            }
            for p in plugins {
                println!("{}", p.name);
                for v in &p.versions {
                    println!(
                        "  {} {:<10} {}  {:>8} bytes  {}",
                        if v.active { "*" } else { " " },
                        v.version,
                        v.sha256,
                        v.size,
                        v.uploaded_at.format("%Y-%m-%d %H:%M:%S")
                    );
                }
                for u in &p.views {
                    println!(
                        "  used by {} ({}{})",
                        u.view,
                        &u.sha256[..u.sha256.len().min(12)],
                        if u.pinned { ", pinned" } else { "" }
                    );
                }
            }
        }
        PluginCommand::Activate { name, version } => {
            let (v, views) = registry
                .activate_plugin(&name, &VersionSelector::parse(&version))
                .await
                .map_err(|e| PluginProblems(e.to_string()))?;
            println!(
                "[OK] Activated plugin {} {} (sha256 {}){}",
                v.name,
                v.version,
                v.sha256,
                switched(&views)
            );
        }
        PluginCommand::New { .. } => unreachable!("handled above"),
        PluginCommand::Delete { name, version } => {
            let v = registry
                .delete_plugin(&name, &VersionSelector::parse(&version))
                .await
                .map_err(|e| PluginProblems(e.to_string()))?;
            println!("[OK] Deleted plugin {} {} (sha256 {})", v.name, v.version, v.sha256);
        }
    }
    Ok(())
}

/// The registry, over a pool on the online store (`Registry::pool` for the online tables).
async fn open_registry(config: &Config) -> Result<Registry> {
    let online = config
        .online_pool()
        .await
        .context("cannot connect to the online store (registry)")?;
    Ok(Registry::new(online, config))
}

async fn list_registry(repo: &Path) -> Result<()> {
    let config = Config::load(repo)?;
    let registry = open_registry(&config).await?;
    let objects = registry.list().await?;
    if objects.is_empty() {
        println!(
            "Nothing is registered for project {} (run `skewless apply`).",
            config.project
        );
        return Ok(());
    }
    // Columns as wide as their widest entry.
    let kind = objects.iter().map(|(o, _)| o.noun.len()).max().unwrap_or(0).max(4);
    let name = objects.iter().map(|(o, _)| o.name.len()).max().unwrap_or(0).max(4);
    println!("{:<kind$}  {:<name$}  {:>7}", "KIND", "NAME", "VERSION");
    for (object, version) in objects {
        println!("{:<kind$}  {:<name$}  {:>7}", object.noun, object.name, version);
    }
    Ok(())
}

/// `materialize` (a window) and `materialize-incremental` (`start` None): acts on what
/// the registry holds, not on the files.
async fn materialize_views(
    repo: &Path,
    start: Option<chrono::DateTime<chrono::Utc>>,
    end: chrono::DateTime<chrono::Utc>,
    views: &[String],
) -> Result<()> {
    use skewless::online::materialize::{self as mat, MaterializeError, Window, display_time};
    let repo = FeatureRepo::load(repo)?;
    let config = &repo.config;
    mat::check_same_database(config)?;
    if let Some(start) = start
        && start > end
    {
        return Err(MaterializeError::InvalidWindow { start, end }.into());
    }
    let online = config
        .online_pool()
        .await
        .context("cannot connect to the online store")?;
    let defs = Registry::new(online.clone(), config).load().await?;
    if defs.feature_views.is_empty() {
        return Err(MaterializeError::NothingApplied {
            project: config.project.clone(),
        }
        .into());
    }
    let count = mat::online_views(&defs, views)?.len();
    let noun = if count == 1 { "view" } else { "views" };
    match start {
        Some(start) => println!(
            "Materializing {count} feature {noun} from {} to {} into the postgres online store.\n",
            display_time(start),
            display_time(end)
        ),
        None => println!(
            "Materializing {count} feature {noun} to {} into the postgres online store.\n",
            display_time(end)
        ),
    }
    let progress = bar(count as u64, "materializing");
    let report = match start {
        Some(start) => {
            let window = Window::between(start, end);
            mat::materialize(&online, config, &defs, window, views, &progress).await
        }
        None => mat::materialize_incremental(&online, config, &defs, end, views, &progress).await,
    };
    progress.finish_and_clear();
    let report = report?;
    for view in &report.views {
        match (start, view.window.start) {
            (Some(_), _) => println!("{}: {} rows", view.view, view.rows),
            (None, Some(from)) if view.window.is_empty() => println!(
                "{}: already materialized up to {}, nothing to do",
                view.view,
                display_time(from)
            ),
            (None, _) => println!("{} {}: {} rows", view.view, view.window, view.rows),
        }
    }
    let noun = if report.views.len() == 1 {
        "view"
    } else {
        "views"
    };
    println!(
        "\n[OK] Materialized {} rows into {} feature {noun} in {:.2}s",
        report.rows(),
        report.views.len(),
        report.elapsed.as_secs_f64()
    );
    Ok(())
}

/// Arguments of `historical`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("entity_rows").required(true).args(["entity_sql", "entities"])))]
#[command(group(clap::ArgGroup::new("feature_list").required(true).args(["features", "feature_service"])))]
struct HistoricalArgs {
    /// SQL returning the entity rows: user_id and event_timestamp columns (runs read-only).
    #[arg(long, value_name = "SQL")]
    entity_sql: Option<String>,
    /// CSV file of entity rows with user_id and event_timestamp columns.
    #[arg(long, value_name = "FILE.csv")]
    entities: Option<PathBuf>,
    /// Features as view:feature, comma-separated, in output order.
    #[arg(long, value_delimiter = ',', value_name = "VIEW:FEATURE,...")]
    features: Vec<String>,
    /// A feature service naming the features.
    #[arg(long, value_name = "NAME")]
    feature_service: Option<String>,
    /// A label from a label view (e.g. churn_label), joined point-in-time as the last column.
    #[arg(long, value_name = "LABEL")]
    label: Option<String>,
    /// Name columns view__feature instead of feature.
    #[arg(long)]
    full_feature_names: bool,
    /// Output format (default: from the --out extension, else csv).
    #[arg(long, value_parser = ["csv", "jsonl", "parquet"])]
    format: Option<String>,
    /// Output file (parent folders are created).
    #[arg(long, value_name = "PATH", required_unless_present = "explain")]
    out: Option<PathBuf>,
    /// Print the query and PostgreSQL's EXPLAIN ANALYZE of it instead of writing rows.
    #[arg(long)]
    explain: bool,
}

/// `historical`: resolves the request against the registry, streams the training set
/// into `<out>.partial`, and renames it into place only when complete.
async fn historical(repo: &Path, args: HistoricalArgs) -> Result<()> {
    use skewless::config::Prewarm;
    use skewless::offline::historical::{self, Entities, HistoricalOptions, HistoricalRequest};
    use skewless::output::{BatchWriter, Format};

    let repo = FeatureRepo::load(repo)?;
    let config = &repo.config;
    let prewarm = match (args.explain, &args.entity_sql) {
        (true, _) => Prewarm::Nothing,
        (false, Some(_)) => Prewarm::BackendsAndEntitySql,
        (false, None) => Prewarm::Backends,
    };
    let offline = config
        .offline_connection_pool(prewarm)
        .await
        .context("cannot connect to the offline store")?;
    // The registry's tables are schema-qualified: when both stores are one database, the
    // whole command runs over that one connection.
    let registry = if config.stores_share_database() {
        Registry::new(offline.clone(), config)
    } else {
        open_registry(config).await?
    };
    let defs = registry.load().await?;
    if defs.feature_views.is_empty() {
        anyhow::bail!(
            "nothing is registered for project {}: run `skewless apply` first",
            config.project
        );
    }
    let full = args.full_feature_names;
    let features = match &args.feature_service {
        Some(name) => defs.select_service(name, full)?,
        None => defs.select_feature_strings(&args.features, full)?,
    };
    let plugins = PluginStore::new(&config.plugins, &repo.dir)?
        .load_applied_for(&registry, &defs, |v| features.iter().any(|f| f.view == v))
        .await?;
    let label = args
        .label
        .as_deref()
        .map(|l| defs.select_label(l, full))
        .transpose()?;
    let out = args.out.clone().unwrap_or_default();
    let format = match &args.format {
        Some(f) => Format::parse(f).expect("clap checked the value"),
        None => Format::from_path(&out).unwrap_or(Format::Csv),
    };
    let entities = match (&args.entity_sql, &args.entities) {
        (Some(sql), _) => Entities::Sql(sql.clone()),
        (None, Some(path)) => Entities::Csv {
            name: path.display().to_string(),
            reader: Box::new(
                std::fs::File::open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            ),
        },
        (None, None) => unreachable!("clap requires one of them"),
    };
    let request = HistoricalRequest {
        entities,
        features,
        label,
        plugins,
    };
    let options = HistoricalOptions::from_config(config);
    if args.explain {
        println!(
            "{}",
            historical::explain(&offline, &defs, request, &options).await?
        );
        return Ok(());
    }
    let mut set = historical::start(&offline, &defs, request, &options).await?;

    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let partial = out.with_extension(match out.extension() {
        Some(ext) => format!("{}.partial", ext.to_string_lossy()),
        None => "partial".into(),
    });
    let file = std::fs::File::create(&partial)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    let result = async {
        let mut writer = BatchWriter::new(
            format,
            &set.schema,
            std::io::BufWriter::with_capacity(1 << 20, file),
            &set.metadata(),
        )?;
        let progress = bar(set.rows, "writing rows");
        let mut written = 0u64;
        while let Some(batch) = set.batches.recv().await {
            let batch = batch?;
            writer.write(&batch)?;
            written += batch.rows as u64;
            progress.inc(batch.rows as u64);
        }
        // One row per entity row, or the training set is incomplete (a task that died
        // without a word): never rename a short file into place.
        anyhow::ensure!(
            written == set.rows,
            "the training set ended after {written} of {} rows",
            set.rows
        );
        writer
            .finish()?
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        progress.finish_and_clear();
        anyhow::Ok(written)
    }
    .await;
    match result {
        Ok(written) => {
            // The provenance beside the data: which features, which plugin bytes.
            let sidecar = PathBuf::from(format!("{}.meta.json", out.display()));
            let meta = serde_json::json!({
                "rows": written,
                "columns": set.schema.iter().map(|c| serde_json::json!({"name": c.name, "dtype": c.dtype.name()})).collect::<Vec<_>>(),
                "plugins": set.plugins,
                "project": config.project,
                "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            });
            std::fs::write(&sidecar, serde_json::to_vec_pretty(&meta)?)
                .with_context(|| format!("cannot write {}", sidecar.display()))?;
            std::fs::rename(&partial, &out)
                .with_context(|| format!("cannot move the result to {}", out.display()))?;
            println!("[OK] Wrote {} with {written} rows", out.display());
            // The query's transaction commits while the file is written: give it a
            // moment to end cleanly before the process does (it only drops a temporary
            // table; PostgreSQL rolls it back if the connection goes first).
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), offline.close()).await;
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

async fn serve(repo: &Path, addr: Option<std::net::SocketAddr>, dev: bool) -> Result<()> {
    let config = Config::load(repo)?;
    let addr = addr.unwrap_or(config.server.bind);
    if config.server.admin_token.is_none() && !(dev && addr.ip().is_loopback()) {
        tracing::warn!(
            "no admin token configured: mutating routes are refused (set server.admin_token, or use --dev on loopback)"
        );
    }
    skewless::server::serve(
        config,
        skewless::server::ServeOptions {
            addr,
            dev,
            // --dev also hot-reloads: the repo's YAML files and its plugins folder.
            watch: dev.then(|| repo.to_path_buf()),
        },
        shutdown_signal(),
    )
    .await?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C: in-flight requests then finish, new ones are refused.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received: finishing in-flight requests");
}

async fn online(
    repo: &Path,
    id: &str,
    features: &[String],
    feature_service: Option<&str>,
) -> Result<()> {
    use skewless::online::read::OnlineQuery;
    let config = Config::load(repo)?;
    let registry = open_registry(&config).await?;
    let defs = registry.load().await?;
    let selected = match (features.is_empty(), feature_service) {
        (false, _) => defs.select_feature_strings(features, false)?,
        (true, Some(name)) => defs.select_service(name, false)?,
        (true, None) => match &config.server.default_feature_service {
            Some(name) => defs.select_service(name, false)?,
            None => anyhow::bail!("give --features or --feature-service"),
        },
    };
    let plugins = PluginStore::new(&config.plugins, repo)?
        .load_applied_for(&registry, &defs, |v| selected.iter().any(|f| f.view == v))
        .await?;
    let query = OnlineQuery::new(&config, &defs, &plugins, selected)?;
    let result = query.read(registry.pool(), &[id.to_string()]).await?;
    let width = result
        .values
        .columns
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    println!("{id}");
    for (f, column) in result.values.columns.iter().enumerate() {
        let mut value = String::new();
        if result.is_served(f, 0) {
            column.write_text(0, &mut value);
        } else {
            value.push_str("null");
        }
        println!(
            "  {:<width$}  {value}  ({})",
            column.name,
            result.statuses[f][0].as_str()
        );
    }
    Ok(())
}

/// `demo`: seeds (found or generated), ingest, apply, materialize.
async fn demo(repo: &Path, seeds: &Path, users: u64) -> Result<()> {
    use skewless::generate::{month_as_of, month_dir_name};
    let first = NaiveDate::from_ymd_opt(2024, 1, 31).expect("a valid date");
    let months = |dir: &Path| -> Vec<PathBuf> {
        (0..)
            .map(|k| dir.join(month_dir_name(k)))
            .take_while(|d| d.join("users.csv").is_file())
            .collect()
    };
    let mut found = months(seeds);
    if found.is_empty() {
        println!(
            "No month folders in {}: generating {users} users x 2 months",
            seeds.display()
        );
        generate(
            &GenerateOptions {
                users,
                months: 2,
                out: seeds.to_path_buf(),
                seed: 42,
                first_as_of: first,
            },
            None,
        )?;
        found = months(seeds);
    }
    let mut last = first;
    for (k, dir) in found.iter().enumerate() {
        last = month_as_of(first, k as u32);
        ingest(repo, dir, last).await?;
    }
    plan_or_apply(repo, true).await?;
    let start = first.and_hms_opt(0, 0, 0).expect("midnight").and_utc() - chrono::Duration::days(1);
    let end = last.and_hms_opt(0, 0, 0).expect("midnight").and_utc() + chrono::Duration::days(1);
    materialize_views(repo, Some(start), end, &[]).await
}
