//! Deterministic generator of StreamFlow-shaped churn data.
//!
//! The course ships a small (7,043 users) StreamFlow data set: one directory per
//! monthly snapshot, each holding six CSV files keyed by `user_id`. Load tests,
//! benchmarks and point-in-time correctness tests need the *same shape* at any
//! scale, reproducibly, so this module synthesises it:
//!
//! ```text
//! out/month_000/{users,subscriptions,usage_agg_30d,payments_agg_90d,support_agg_90d,labels}.csv
//! out/month_001/…
//! ```
//!
//! Design constraints, and how they are met:
//!
//! * **Bounded memory.** Rows are never collected. Each user is simulated from
//!   month 0 to month `M-1` in one go and each month's rows go straight into
//!   that month's six output buffers (6 × M files open at once, or several
//!   passes when M is large), which a writer thread flushes to disk while the
//!   next users are formatted. Memory is `O(months)`, not `O(users)`.
//! * **Determinism.** Month `k` of user `i` depends only on `(seed, i, k)`:
//!   every user has its own ChaCha8 stream (key derived from the seed, stream
//!   number = user index), and the simulation of month `k` only consumes draws
//!   of months `≤ k`. Hence the same options give byte-identical files, and the
//!   first months of a longer run equal a shorter run. Only IEEE-exact float
//!   operations are used (`+ - × ÷ sqrt`, rounding, and a hand-written `exp`),
//!   never the platform `libm`, so output does not depend on the C library.
//! * **Unique, realistic IDs without a set.** See [`user_id`].
//! * **Plausible dynamics.** Tenure grows by one month per snapshot,
//!   `total_paid` accumulates the current fee, usage drifts, the 90-day
//!   aggregates are genuine sliding windows over three simulated months, and the
//!   churn label is drawn each month from a logistic model of the current
//!   features (short tenure, month-to-month contract, failed payments, low watch
//!   hours, …), so a model trained on the data has something real to learn.
//!   The user set is a fixed cohort (no new signups), so over long horizons it
//!   ages and the churn rate drifts down slowly (≈25% at month 0, ≈22% after a
//!   year, ≈19% after three).

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use chrono::{Datelike, Days, Months, NaiveDate};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Size of the user-ID space: 4 decimal digits × 5 uppercase letters,
/// `10^4 × 26^5 = 118,813,760,000`. [`generate`] refuses more users than this.
pub const ID_SPACE: u64 = DIGITS_SPACE * LETTERS_SPACE;
const DIGITS_SPACE: u64 = 10_000;
const LETTERS_SPACE: u64 = 26 * 26 * 26 * 26 * 26;

/// Maximum number of monthly snapshots. Directory names are zero-padded to
/// three digits (`month_000` … `month_999`) so that they sort lexicographically
/// in chronological order; a 1001st month would break that.
pub const MAX_MONTHS: u32 = 1000;

/// Names of the six files written into every month directory, in the order
/// they are listed in [`HEADERS`]. These are also the only entries allowed in a
/// pre-existing month directory (they get overwritten).
pub const FILE_NAMES: [&str; 6] = [
    "users.csv",
    "subscriptions.csv",
    "usage_agg_30d.csv",
    "payments_agg_90d.csv",
    "support_agg_90d.csv",
    "labels.csv",
];

/// Header lines of the six files (same as the real course data), parallel to
/// [`FILE_NAMES`].
pub const HEADERS: [&str; 6] = [
    "user_id,signup_date,user_gender,user_is_senior,has_family,has_dependents",
    "user_id,months_active,plan_stream_tv,plan_stream_movies,contract_type,paperless_billing,monthly_fee,total_paid,net_service",
    "user_id,watch_hours_30d,avg_session_mins_7d,unique_devices_30d,skips_7d,rebuffer_events_7d",
    "user_id,failed_payments_90d",
    "user_id,support_tickets_90d,ticket_avg_resolution_hrs_90d",
    "user_id,churn_label",
];

/// How often (in users) the optional progress bar is updated. Updating per
/// user would make the bar's atomics/redraw logic a measurable cost.
const PROGRESS_EVERY: u64 = 10_000;

/// Months written per pass over the users. Beyond this, the generator makes
/// several passes (re-simulating users from month 0, which is cheap) so the
/// number of simultaneously open files stays below common `ulimit -n` values.
const MONTHS_PER_PASS: u32 = 64;

/// Total byte budget for the output chunk buffers of one pass; each file gets
/// an equal share, clamped to `[64 KiB, 1 MiB]`.
const BUFFER_BUDGET: usize = 64 << 20;

/// Longest initial tenure (months) a generated user can have at month 0, as in
/// the real data (0–72).
const MAX_INITIAL_TENURE: u32 = 72;

/// Months simulated before month 0 so that the 90-day windows of month 0 are
/// already full.
const WARM_UP_MONTHS: u32 = 2;

/// What to generate and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Number of users (rows per file). Must be in `1..=ID_SPACE`.
    pub users: u64,
    /// Number of monthly snapshots. Must be in `1..=MAX_MONTHS`.
    pub months: u32,
    /// Output directory; `month_NNN/` subdirectories are created inside it.
    pub out: PathBuf,
    /// Seed of everything: user IDs, attributes and their evolution.
    pub seed: u64,
    /// Any day of the first snapshot's month; month `k`'s as-of date is the
    /// last day of the month `k` months later (see [`month_as_of`]).
    pub first_as_of: NaiveDate,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateSummary {
    /// Users per file.
    pub users: u64,
    /// Number of month directories written.
    pub months: u32,
    /// As-of date of each month, index = month number.
    pub as_of: Vec<NaiveDate>,
    /// Month directories written, index = month number.
    pub dirs: Vec<PathBuf>,
}

/// Why [`generate`] failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// `users` was 0.
    #[error("invalid options: users must be at least 1")]
    NoUsers,
    /// `months` was 0.
    #[error("invalid options: months must be at least 1")]
    NoMonths,
    /// More users than distinct IDs of the form `DDDD-LLLLL`.
    #[error("invalid options: {users} users exceed the user-ID space of {max} IDs")]
    TooManyUsers {
        /// Requested users.
        users: u64,
        /// [`ID_SPACE`].
        max: u64,
    },
    /// More months than three-digit directory names allow.
    #[error("invalid options: {months} months exceed the maximum of {max}")]
    TooManyMonths {
        /// Requested months.
        months: u32,
        /// [`MAX_MONTHS`].
        max: u32,
    },
    /// The as-of dates (or the signup dates before them) fall outside chrono's
    /// representable range.
    #[error(
        "invalid options: dates around first_as_of {first_as_of} over {months} months are out of range"
    )]
    DateOutOfRange {
        /// Requested first as-of date.
        first_as_of: NaiveDate,
        /// Requested months.
        months: u32,
    },
    /// A month directory already exists and holds something this generator
    /// did not write; refusing protects unrelated data from being mixed with or
    /// mistaken for generated snapshots.
    #[error("refusing to write into {}: it contains {entry:?}, which is not a generated file", dir.display())]
    ForeignEntry {
        /// The existing month directory.
        dir: PathBuf,
        /// The unexpected entry's file name.
        entry: OsString,
    },
    /// A file-system operation failed.
    #[error("I/O error at {}: {source}", path.display())]
    Io {
        /// The path being read, created or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl GenerateError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> GenerateError + '_ {
        move |source| GenerateError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// As-of date of month `k`: the last day of the month `k` months after
/// `first`'s month (`2024-01-31`, `2024-02-29`, `2024-03-31`, …).
///
/// Month-end dates are used because the snapshots are monthly aggregates
/// "as of" the close of each month; deriving them from a month offset rather
/// than adding 30 days avoids drifting off month ends.
///
/// # Panics
/// If the date is outside chrono's range (tens of thousands of years away);
/// [`generate`] validates its options so it never triggers this.
pub fn month_as_of(first: NaiveDate, k: u32) -> NaiveDate {
    checked_month_as_of(first, k).expect("as-of date out of chrono's range")
}

fn checked_month_as_of(first: NaiveDate, k: u32) -> Option<NaiveDate> {
    first
        .with_day(1)?
        .checked_add_months(Months::new(k.checked_add(1)?))?
        .pred_opt()
}

/// Name of month `k`'s directory: `month_000`, `month_001`, …
pub fn month_dir_name(k: u32) -> String {
    format!("month_{k:03}")
}

/// The ID of user `index` (0-based) for `seed`, e.g. `7590-VHVEG`.
///
/// IDs must be unique for millions of users without remembering the ones
/// already issued, and must not look sequential. Hence the index goes through
/// a *bijection* of the ID space `[0, 10^4 × 26^5)`: an affine map
/// `i ↦ (a·i + b) mod N` (with `a` coprime to `N`, so it is invertible) followed
/// by two Feistel-style rounds that shift the digit part by a hash of the
/// letter part and vice versa (each round is invertible, which removes the
/// arithmetic-progression look of a bare affine map). Distinct indices thus
/// give distinct IDs; the result is decoded in mixed radix as 4 digits and 5
/// letters. `a`, `b` and the round keys derive from the seed.
///
/// # Panics
/// If `index >= ID_SPACE`.
pub fn user_id(seed: u64, index: u64) -> String {
    let bytes = IdCodec::new(seed).encode(index);
    String::from_utf8(bytes.to_vec()).expect("IDs are ASCII")
}

/// Precomputed parameters of the seed's ID bijection (see [`user_id`]).
#[derive(Debug, Clone, Copy)]
struct IdCodec {
    a: u64,
    b: u64,
    k1: u64,
    k2: u64,
}

impl IdCodec {
    fn new(seed: u64) -> Self {
        let mut s = seed ^ 0x5EED_1D50_F1D5;
        let mut next = || splitmix64(&mut s);
        // `a` in [N/3, 5N/6): far from 1 so neighbours are far apart. N = 2^9 · 5^4 · 13^5,
        // so stepping forward finds a unit within a few steps, staying below N.
        let mut a = ID_SPACE / 3 + next() % (ID_SPACE / 2);
        while a.is_multiple_of(2) || a.is_multiple_of(5) || a.is_multiple_of(13) {
            a += 1;
        }
        let b = next() % ID_SPACE;
        let (k1, k2) = (next(), next());
        Self { a, b, k1, k2 }
    }

    fn encode(&self, index: u64) -> [u8; 10] {
        assert!(index < ID_SPACE, "user index {index} outside the ID space");
        let v = ((self.a as u128 * index as u128 + self.b as u128) % ID_SPACE as u128) as u64;
        let (mut d, mut l) = (v % DIGITS_SPACE, v / DIGITS_SPACE);
        d = (d + mix64(l ^ self.k1) % DIGITS_SPACE) % DIGITS_SPACE;
        l = (l + mix64(d ^ self.k2) % LETTERS_SPACE) % LETTERS_SPACE;
        let mut out = [0u8; 10];
        for slot in out[..4].iter_mut().rev() {
            *slot = b'0' + (d % 10) as u8;
            d /= 10;
        }
        out[4] = b'-';
        for slot in out[5..].iter_mut().rev() {
            *slot = b'A' + (l % 26) as u8;
            l /= 26;
        }
        out
    }
}

/// SplitMix64 step: a tiny, well-mixed generator used to derive keys from the seed.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    mix64(*state)
}

/// SplitMix64's finaliser: a fast 64-bit hash.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes `opts.months` snapshots of `opts.users` users into `opts.out`.
///
/// Streams: each user is simulated across all months and written immediately,
/// so memory does not grow with `users`. The progress bar (if any) gets
/// `position = users done` every ~10k users; its length is set to `users` if
/// it has none.
///
/// Existing month directories may be reused only if they contain nothing but
/// the six generated file names (which are then overwritten); all month
/// directories are checked before anything is written. Month directories
/// beyond `months` left over from earlier runs are not touched.
pub fn generate(
    opts: &GenerateOptions,
    progress: Option<&indicatif::ProgressBar>,
) -> Result<GenerateSummary, GenerateError> {
    validate(opts)?;
    let as_of: Vec<NaiveDate> = (0..opts.months)
        .map(|k| month_as_of(opts.first_as_of, k))
        .collect();
    let dirs: Vec<PathBuf> = (0..opts.months)
        .map(|k| opts.out.join(month_dir_name(k)))
        .collect();
    for dir in &dirs {
        check_month_dir(dir)?;
    }
    let stale = opts.out.join(month_dir_name(opts.months));
    if stale.exists() {
        tracing::warn!(
            dir = %stale.display(),
            "a month directory beyond the requested months exists from an earlier run; leaving it alone"
        );
    }
    for dir in &dirs {
        fs::create_dir_all(dir).map_err(GenerateError::io(dir))?;
    }

    tracing::info!(
        users = opts.users,
        months = opts.months,
        seed = opts.seed,
        out = %opts.out.display(),
        "generating StreamFlow data"
    );
    if let Some(pb) = progress
        && pb.length().is_none()
    {
        pb.set_length(opts.users);
    }

    let ctx = Context::new(opts);
    let passes = opts.months.div_ceil(MONTHS_PER_PASS);
    for pass in 0..passes {
        let first = pass * MONTHS_PER_PASS;
        let last = (first + MONTHS_PER_PASS).min(opts.months);
        write_pass(&ctx, opts.users, &dirs, first..last, &mut |done| {
            if let Some(pb) = progress {
                // Monotonic across passes, ending at `users`.
                let total = u128::from(pass) * u128::from(opts.users) + u128::from(done);
                pb.set_position((total / u128::from(passes)) as u64);
            }
        })?;
    }
    if let Some(pb) = progress {
        pb.set_position(opts.users);
    }
    tracing::info!(users = opts.users, months = opts.months, "generation done");

    Ok(GenerateSummary {
        users: opts.users,
        months: opts.months,
        as_of,
        dirs,
    })
}

fn validate(opts: &GenerateOptions) -> Result<(), GenerateError> {
    if opts.users == 0 {
        return Err(GenerateError::NoUsers);
    }
    if opts.months == 0 {
        return Err(GenerateError::NoMonths);
    }
    if opts.users > ID_SPACE {
        return Err(GenerateError::TooManyUsers {
            users: opts.users,
            max: ID_SPACE,
        });
    }
    if opts.months > MAX_MONTHS {
        return Err(GenerateError::TooManyMonths {
            months: opts.months,
            max: MAX_MONTHS,
        });
    }
    let dates_ok = checked_month_as_of(opts.first_as_of, opts.months - 1).is_some()
        && checked_month_as_of(opts.first_as_of, 0)
            .and_then(|d| d.checked_sub_months(Months::new(MAX_INITIAL_TENURE + 1)))
            .and_then(|d| d.checked_sub_days(Days::new(31)))
            .is_some();
    if !dates_ok {
        return Err(GenerateError::DateOutOfRange {
            first_as_of: opts.first_as_of,
            months: opts.months,
        });
    }
    Ok(())
}

/// Accepts a missing directory or one holding only generated file names.
fn check_month_dir(dir: &Path) -> Result<(), GenerateError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(GenerateError::io(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(GenerateError::io(dir))?;
        let name = entry.file_name();
        if !FILE_NAMES.iter().any(|f| name == *f) {
            return Err(GenerateError::ForeignEntry {
                dir: dir.to_path_buf(),
                entry: name,
            });
        }
    }
    Ok(())
}

/// Seed-derived, per-run constants.
struct Context {
    ids: IdCodec,
    key: [u8; 32],
    first_as_of: NaiveDate,
}

impl Context {
    fn new(opts: &GenerateOptions) -> Self {
        let mut s = opts.seed ^ 0xC4AC_4A5E_ED00_0001;
        let mut key = [0u8; 32];
        for chunk in key.chunks_exact_mut(8) {
            chunk.copy_from_slice(&splitmix64(&mut s).to_le_bytes());
        }
        Self {
            ids: IdCodec::new(opts.seed),
            key,
            first_as_of: month_as_of(opts.first_as_of, 0),
        }
    }

    /// The user's private random stream: ChaCha's 64-bit stream number is the
    /// user index, so users are independent and can be regenerated alone.
    fn rng(&self, index: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::from_seed(self.key);
        rng.set_stream(index);
        rng
    }
}

/// Chunks that may be queued for the writer thread at once.
const IN_FLIGHT: usize = 16;

/// Extra capacity of a chunk buffer beyond its flush threshold, so that the
/// line crossing the threshold never reallocates.
const LINE_SLACK: usize = 4096;

/// The producer stopped because the writer thread went away (after an error).
struct WriterGone;

/// Simulates every user over months `0..months.end`, writing months in `months`.
///
/// Formatting rows (CPU) and copying them into the page cache (kernel) cost
/// about the same, so the two overlap: this thread formats rows into one chunk
/// buffer per file and hands full chunks to a writer thread over a bounded
/// channel (chunks are sent and written in order, so the bytes are exactly
/// those of a sequential write). Memory is bounded by the live chunks
/// (6 × months-in-pass), the channel bound and the recycled buffers.
fn write_pass(
    ctx: &Context,
    users: u64,
    dirs: &[PathBuf],
    months: std::ops::Range<u32>,
    on_progress: &mut dyn FnMut(u64),
) -> Result<(), GenerateError> {
    let n_months = (months.end - months.start) as usize;
    let chunk = (BUFFER_BUDGET / (6 * n_months)).clamp(64 << 10, 1 << 20);
    let mut files: Vec<(PathBuf, File)> = Vec::with_capacity(6 * n_months);
    let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(6 * n_months);
    for k in months.clone() {
        for (name, header) in FILE_NAMES.iter().zip(HEADERS) {
            let path = dirs[k as usize].join(name);
            let file = File::create(&path).map_err(GenerateError::io(&path))?;
            files.push((path, file));
            let mut buf = Vec::with_capacity(chunk + LINE_SLACK);
            buf.extend_from_slice(header.as_bytes());
            buf.push(b'\n');
            bufs.push(buf);
        }
    }

    let (tx, rx) = mpsc::sync_channel::<(usize, Vec<u8>)>(IN_FLIGHT);
    let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> Result<(), GenerateError> {
            for (slot, mut buf) in rx {
                let (path, file) = &mut files[slot];
                file.write_all(&buf).map_err(GenerateError::io(path))?;
                buf.clear();
                // The producer may be done already; then the buffer is just dropped.
                let _ = recycle_tx.send(buf);
            }
            Ok(())
        });
        let mut sink = ChunkSink {
            bufs,
            chunk,
            tx,
            recycled: recycle_rx,
        };
        let produced = produce(ctx, users, months, &mut sink, on_progress);
        drop(sink); // closes the channel: the writer drains it and returns
        let written = writer.join().expect("writer thread panicked");
        // A write error also stops the producer (`WriterGone`); report the former.
        written?;
        match produced {
            Ok(()) => Ok(()),
            Err(WriterGone) => unreachable!("writer stopped without an error"),
        }
    })
}

/// Per-file chunk buffers of a pass and the channel to the writer thread.
struct ChunkSink {
    bufs: Vec<Vec<u8>>,
    chunk: usize,
    tx: mpsc::SyncSender<(usize, Vec<u8>)>,
    recycled: mpsc::Receiver<Vec<u8>>,
}

impl ChunkSink {
    /// Sends the chunks of slots `first..first + 6` that reached the threshold.
    fn ship_full(&mut self, first: usize) -> Result<(), WriterGone> {
        for slot in first..first + 6 {
            if self.bufs[slot].len() >= self.chunk {
                self.ship(slot)?;
            }
        }
        Ok(())
    }

    fn ship(&mut self, slot: usize) -> Result<(), WriterGone> {
        let fresh = self
            .recycled
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(self.chunk + LINE_SLACK));
        let full = std::mem::replace(&mut self.bufs[slot], fresh);
        self.tx.send((slot, full)).map_err(|_| WriterGone)
    }

    fn ship_all(&mut self) -> Result<(), WriterGone> {
        for slot in 0..self.bufs.len() {
            if !self.bufs[slot].is_empty() {
                self.ship(slot)?;
            }
        }
        Ok(())
    }
}

fn produce(
    ctx: &Context,
    users: u64,
    months: std::ops::Range<u32>,
    sink: &mut ChunkSink,
    on_progress: &mut dyn FnMut(u64),
) -> Result<(), WriterGone> {
    let mut user_line = Vec::with_capacity(128);
    for index in 0..users {
        if index % PROGRESS_EVERY == 0 {
            on_progress(index);
        }
        let id = ctx.ids.encode(index);
        let mut rng = ctx.rng(index);
        let mut user = User::new(&mut rng, ctx.first_as_of);
        user.format_static(&id, &mut user_line);
        for k in 0..months.end {
            let month = user.step(&mut rng, k);
            if k < months.start {
                continue;
            }
            let first = (k - months.start) as usize * 6;
            let bufs = &mut sink.bufs[first..first + 6];
            bufs[0].extend_from_slice(&user_line);
            month.format(&id, &user, &mut bufs[1..]);
            sink.ship_full(first)?;
        }
    }
    sink.ship_all()?;
    on_progress(users);
    Ok(())
}

// ---------------------------------------------------------------------------
// Deterministic random helpers (IEEE-exact arithmetic only).

/// Uniform in `[0, 1)` with 53 bits of precision.
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Bernoulli(`p`).
fn bern(rng: &mut ChaCha8Rng, p: f64) -> bool {
    unit(rng) < p
}

/// Uniform integer in `0..n` (multiply-shift; bias ≤ n/2^64, irrelevant here).
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    ((u128::from(rng.next_u64()) * u128::from(n)) >> 64) as u64
}

/// Approximately standard normal: Irwin–Hall sum of four 16-bit uniforms,
/// rescaled to unit variance. Bounded (|z| < 3.47), which suits data that must
/// stay in realistic ranges, and needs no `ln`/`cos` (whose results vary
/// across C libraries).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let x = rng.next_u64();
    let sum = (x & 0xFFFF) + ((x >> 16) & 0xFFFF) + ((x >> 32) & 0xFFFF) + (x >> 48);
    ((sum as f64 + 2.0) / 65536.0 - 2.0) * 1.732_050_807_568_877_2
}

/// `e^x` from `+`, `×` and bit manipulation only, so results are identical on
/// every platform (libm's `exp` is not guaranteed to be). Relative error ~1e-13.
fn exp_det(x: f64) -> f64 {
    let x = x.clamp(-700.0, 700.0);
    let t = x * std::f64::consts::LOG2_E;
    let n = t.round();
    let g = (t - n) * std::f64::consts::LN_2; // |g| ≤ 0.35
    let mut term = 1.0;
    let mut sum = 1.0;
    for i in 1..=12 {
        term = term * g / f64::from(i);
        sum += term;
    }
    sum * f64::from_bits(((n as i64 + 1023) as u64) << 52)
}

fn logistic(z: f64) -> f64 {
    1.0 / (1.0 + exp_det(-z))
}

// ---------------------------------------------------------------------------
// The user model.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Net {
    Dsl,
    Fiber,
    No,
}

impl Net {
    fn as_str(self) -> &'static str {
        match self {
            Net::Dsl => "DSL",
            Net::Fiber => "Fiber optic",
            Net::No => "No",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contract {
    MonthToMonth,
    OneYear,
    TwoYear,
}

impl Contract {
    fn as_str(self) -> &'static str {
        match self {
            Contract::MonthToMonth => "Month-to-month",
            Contract::OneYear => "One year",
            Contract::TwoYear => "Two year",
        }
    }
}

fn py_bool(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// One user's static attributes and evolving state.
struct User {
    signup: NaiveDate,
    male: bool,
    senior: bool,
    family: bool,
    dependents: bool,
    net: Net,
    paperless: bool,
    /// Latent churn propensity: keeps labels persistent across months and
    /// slightly depresses usage, as disengaging users do.
    propensity: f64,
    /// Fee of the internet/base plan in cents (multiple of 5), add-ons excluded.
    base_fee_cents: i64,
    /// Months active at month 0.
    tenure0: u32,
    /// Total paid at month 0, in cents.
    total0_cents: i64,
    fail_rate: f64,
    ticket_rate: f64,
    resolution_base: f64,
    session_level: f64,
    devices: u32,
    skips_level: f64,
    rebuffer_level: f64,

    // Evolving state.
    tenure: u32,
    contract: Contract,
    tv: bool,
    movies: bool,
    total_cents: i64,
    watch_level: f64,
    /// Long-run mean of `watch_level`.
    watch_habit: f64,
    /// Last three months of (failed payments, tickets, summed resolution hours),
    /// oldest first: the 90-day windows.
    window: [(u32, u32, f64); 3],
}

/// One user's values for one month.
struct Month {
    watch_hours: f64,
    session_mins: f64,
    devices: u32,
    skips: u32,
    rebuffers: u32,
    failed_90d: u32,
    tickets_90d: u32,
    resolution_hrs: Option<f64>,
    churn: bool,
}

impl User {
    /// Draws the user's attributes as of month 0 and simulates the warm-up
    /// months that fill the 90-day windows.
    fn new(rng: &mut ChaCha8Rng, as_of0: NaiveDate) -> Self {
        let male = bern(rng, 0.505);
        let senior = bern(rng, 0.162);
        let family = bern(rng, 0.483);
        let dependents = bern(rng, if family { 0.5 } else { 0.1 });

        // Tenure: spikes at both ends, as in the real data.
        let r = unit(rng);
        let tenure0 = if r < 0.15 {
            below(rng, 6) as u32
        } else if r < 0.25 {
            66 + below(rng, 7) as u32
        } else {
            below(rng, u64::from(MAX_INITIAL_TENURE) + 1) as u32
        };
        let signup = as_of0
            .checked_sub_months(Months::new(tenure0))
            .and_then(|d| d.checked_sub_days(Days::new(below(rng, 28))))
            .expect("validated date range");

        let r = unit(rng);
        let net = if r < 0.217 {
            Net::No
        } else if r < 0.561 {
            Net::Dsl
        } else {
            Net::Fiber
        };
        let paperless = bern(rng, if net == Net::Fiber { 0.75 } else { 0.5 });
        let (tv, movies) = if net == Net::No {
            (false, false)
        } else {
            let tv = bern(rng, 0.49);
            (tv, bern(rng, if tv { 0.65 } else { 0.35 }))
        };
        let base_fee_cents = match net {
            Net::No if bern(rng, 0.12) => 1825 + 5 * below(rng, 161) as i64,
            Net::No => 1825 + 5 * below(rng, 56) as i64,
            Net::Dsl => 2400 + 5 * below(rng, 901) as i64,
            Net::Fiber => 6800 + 5 * below(rng, 601) as i64,
        };

        // Longer-tenured customers are on longer contracts.
        let t = f64::from(tenure0);
        let p_m2m = (0.92 - 0.0115 * t).clamp(0.05, 0.95);
        let p_two = 0.2 + 0.6 * t / 72.0;
        let contract = if bern(rng, p_m2m) {
            Contract::MonthToMonth
        } else if bern(rng, p_two) {
            Contract::TwoYear
        } else {
            Contract::OneYear
        };

        let propensity = 0.8 * normal(rng);
        let fee = fee_cents(base_fee_cents, tv, movies);
        let ratio = if tenure0 <= 1 {
            1.0
        } else {
            (1.0 + 0.05 * normal(rng)).clamp(0.7, 1.5)
        };
        let total0_cents = (f64::from(tenure0) * fee as f64 * ratio).round() as i64;

        let fail_rate =
            if bern(rng, 0.15) { 0.25 } else { 0.03 } + if paperless { 0.01 } else { 0.0 };
        let ticket_rate = 0.02
            + 0.05 * unit(rng)
            + match net {
                Net::Fiber => 0.02,
                _ => 0.0,
            };
        let resolution_base = (10.0 + 3.5 * normal(rng)).clamp(1.0, 24.9);
        let session_level = (29.0 + 7.0 * normal(rng)).max(3.0);
        let devices = 1 + below(rng, 3) as u32;
        let skips_level = (5.0 + 1.0 * normal(rng)).max(0.5);
        let rebuffer_level = match net {
            Net::Fiber => 1.8,
            Net::Dsl => 2.9,
            Net::No => 2.4,
        } + 0.4 * normal(rng);
        let watch_level = 30.0 - 2.0 * propensity + 5.5 * normal(rng);

        let mut user = User {
            signup,
            male,
            senior,
            family,
            dependents,
            net,
            paperless,
            propensity,
            base_fee_cents,
            tenure0,
            total0_cents,
            fail_rate,
            ticket_rate,
            resolution_base,
            session_level,
            devices,
            skips_level,
            rebuffer_level,
            tenure: tenure0,
            contract,
            tv,
            movies,
            total_cents: total0_cents,
            watch_level,
            watch_habit: watch_level,
            window: [(0, 0, 0.0); 3],
        };
        // Months -2 and -1; a month before signup has no events.
        for back in (1..=WARM_UP_MONTHS).rev() {
            let exists = tenure0 >= back;
            user.simulate_events(rng, exists);
        }
        user
    }

    fn fee_cents(&self) -> i64 {
        fee_cents(self.base_fee_cents, self.tv, self.movies)
    }

    /// Draws one month's failed payments and support tickets and slides the
    /// 90-day window.
    fn simulate_events(&mut self, rng: &mut ChaCha8Rng, exists: bool) {
        let failed = u32::from(bern(rng, self.fail_rate));
        let mut tickets = 0;
        let mut hours = 0.0;
        for _ in 0..2 {
            if bern(rng, self.ticket_rate) {
                tickets += 1;
                hours += (self.resolution_base + 2.5 * normal(rng)).clamp(1.0, 48.0);
            }
        }
        let month = if exists {
            (failed, tickets, hours)
        } else {
            (0, 0, 0.0)
        };
        self.window = [self.window[1], self.window[2], month];
    }

    /// Advances to month `k` (months must be stepped in order from 0) and
    /// returns its values.
    fn step(&mut self, rng: &mut ChaCha8Rng, k: u32) -> Month {
        if k > 0 {
            self.tenure += 1;
            // Monthly contract changes: some commit for longer, some let a
            // contract lapse. Near-balanced, so the mix drifts only slowly.
            let r = unit(rng);
            self.contract = match self.contract {
                Contract::MonthToMonth if r < 0.008 => Contract::OneYear,
                Contract::MonthToMonth if r < 0.011 => Contract::TwoYear,
                Contract::OneYear if r < 0.012 => Contract::MonthToMonth,
                Contract::OneYear if r < 0.020 => Contract::TwoYear,
                Contract::TwoYear if r < 0.004 => Contract::MonthToMonth,
                Contract::TwoYear if r < 0.009 => Contract::OneYear,
                c => c,
            };
            if self.net != Net::No && bern(rng, 0.02) {
                if bern(rng, 0.5) {
                    self.tv = !self.tv;
                } else {
                    self.movies = !self.movies;
                }
            }
            self.total_cents += self.fee_cents();
            // Mean-reverting drift around the user's own habit, so usage
            // wanders month to month without trending away over long runs.
            self.watch_level += 0.15 * (self.watch_habit - self.watch_level) + 0.9 * normal(rng);
        }
        debug_assert_eq!(self.tenure, self.tenure0 + k);
        debug_assert!(k > 0 || self.total_cents == self.total0_cents);
        self.simulate_events(rng, true);

        let watch_hours = (self.watch_level + 3.0 * normal(rng) + unit(rng) - 0.5).max(0.25);
        let session_mins = (self.session_level + 4.0 * normal(rng)).max(1.0) + unit(rng);
        let devices = self.devices + u32::from(bern(rng, 0.08));
        let skips = (self.skips_level + 1.9 * normal(rng)).round().max(0.0) as u32;
        let rebuffers = (self.rebuffer_level + 1.3 * normal(rng)).round().max(0.0) as u32;
        let failed_90d = self.window.iter().map(|m| m.0).sum::<u32>();
        let tickets_90d = self.window.iter().map(|m| m.1).sum::<u32>();
        let hours_90d = self.window.iter().map(|m| m.2).sum::<f64>();
        // With tickets: their mean resolution time. Without: the source system
        // imputes the user's typical value, except for a few users (NULL).
        let null_draw = bern(rng, 0.06);
        let resolution_hrs = if tickets_90d > 0 {
            Some(hours_90d / f64::from(tickets_90d))
        } else if null_draw {
            None
        } else {
            Some(self.resolution_base)
        };

        let z = -2.62
            + match self.contract {
                Contract::MonthToMonth => 1.4,
                Contract::OneYear => 0.0,
                Contract::TwoYear => -1.3,
            }
            + 1.1 * exp_det(-f64::from(self.tenure) / 15.0)
            + match self.net {
                Net::Fiber => 0.55,
                Net::Dsl => 0.0,
                Net::No => -0.4,
            }
            + 0.5 * f64::from(failed_90d)
            + 0.07 * (28.0 - watch_hours)
            + 0.2 * f64::from(tickets_90d)
            + if self.senior { 0.25 } else { 0.0 }
            + if self.paperless { 0.2 } else { 0.0 }
            + if self.family { -0.15 } else { 0.0 }
            + self.propensity;
        let churn = bern(rng, logistic(z));

        Month {
            watch_hours,
            session_mins,
            devices,
            skips,
            rebuffers,
            failed_90d,
            tickets_90d,
            resolution_hrs,
            churn,
        }
    }

    /// The users.csv line (identical in every month).
    fn format_static(&self, id: &[u8; 10], line: &mut Vec<u8>) {
        line.clear();
        line.extend_from_slice(id);
        let _ = writeln!(
            line,
            ",{:04}-{:02}-{:02},{},{},{},{}",
            self.signup.year(),
            self.signup.month(),
            self.signup.day(),
            if self.male { "Male" } else { "Female" },
            py_bool(self.senior),
            py_bool(self.family),
            py_bool(self.dependents),
        );
    }
}

fn fee_cents(base: i64, tv: bool, movies: bool) -> i64 {
    (base + 1000 * i64::from(tv) + 1000 * i64::from(movies)).clamp(1825, 11875)
}

/// Appends `n` in decimal (the hot path; `write!` is several times slower).
fn push_uint(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Appends non-negative `cents` as `D.CC`.
fn push_money(buf: &mut Vec<u8>, cents: i64) {
    let cents = cents.unsigned_abs();
    push_uint(buf, cents / 100);
    buf.extend_from_slice(&[
        b'.',
        b'0' + (cents / 10 % 10) as u8,
        b'0' + (cents % 10) as u8,
    ]);
}

/// Appends `x` with Rust's shortest round-trip formatting (`{}`).
fn push_f64(buf: &mut Vec<u8>, x: f64) {
    let _ = write!(buf, "{x}");
}

impl Month {
    /// Appends the five per-month lines (all files but users.csv) to `bufs`.
    fn format(&self, id: &[u8; 10], user: &User, bufs: &mut [Vec<u8>]) {
        let [subs, usage, payments, support, labels] = bufs else {
            unreachable!("five per-month files")
        };
        for buf in [
            &mut *subs,
            &mut *usage,
            &mut *payments,
            &mut *support,
            &mut *labels,
        ] {
            buf.extend_from_slice(id);
            buf.push(b',');
        }

        push_uint(subs, u64::from(user.tenure));
        subs.push(b',');
        if user.net != Net::No {
            // NULL (empty) cells otherwise: no internet, no streaming plans.
            subs.extend_from_slice(py_bool(user.tv).as_bytes());
            subs.push(b',');
            subs.extend_from_slice(py_bool(user.movies).as_bytes());
        } else {
            subs.push(b',');
        }
        subs.push(b',');
        subs.extend_from_slice(user.contract.as_str().as_bytes());
        subs.push(b',');
        subs.extend_from_slice(py_bool(user.paperless).as_bytes());
        subs.push(b',');
        push_money(subs, user.fee_cents());
        subs.push(b',');
        push_money(subs, user.total_cents);
        subs.push(b',');
        subs.extend_from_slice(user.net.as_str().as_bytes());
        subs.push(b'\n');

        push_f64(usage, self.watch_hours);
        usage.push(b',');
        push_f64(usage, self.session_mins);
        for n in [self.devices, self.skips, self.rebuffers] {
            usage.push(b',');
            push_uint(usage, u64::from(n));
        }
        usage.push(b'\n');

        push_uint(payments, u64::from(self.failed_90d));
        payments.push(b'\n');

        push_uint(support, u64::from(self.tickets_90d));
        support.push(b',');
        if let Some(hrs) = self.resolution_hrs {
            let _ = write!(support, "{hrs:.1}");
        }
        support.push(b'\n');

        labels.extend_from_slice(py_bool(self.churn).as_bytes());
        labels.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn opts(dir: &Path, users: u64, months: u32, seed: u64) -> GenerateOptions {
        GenerateOptions {
            users,
            months,
            out: dir.to_path_buf(),
            seed,
            first_as_of: NaiveDate::from_ymd_opt(2024, 1, 31).unwrap(),
        }
    }

    fn read(dir: &Path, k: u32, file: &str) -> String {
        fs::read_to_string(dir.join(month_dir_name(k)).join(file)).unwrap()
    }

    fn rows(text: &str) -> Vec<Vec<&str>> {
        text.lines()
            .skip(1)
            .map(|l| l.split(',').collect())
            .collect()
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn month_as_of_handles_leap_years_and_year_end() {
        let jan = date(2024, 1, 31);
        assert_eq!(month_as_of(jan, 0), jan);
        assert_eq!(month_as_of(jan, 1), date(2024, 2, 29));
        assert_eq!(month_as_of(jan, 2), date(2024, 3, 31));
        assert_eq!(month_as_of(jan, 3), date(2024, 4, 30));
        assert_eq!(month_as_of(jan, 13), date(2025, 2, 28));
        assert_eq!(month_as_of(date(2023, 1, 31), 1), date(2023, 2, 28));
        assert_eq!(month_as_of(date(1900, 2, 1), 0), date(1900, 2, 28));
        assert_eq!(month_as_of(date(2000, 2, 1), 0), date(2000, 2, 29));
        assert_eq!(month_as_of(date(2024, 12, 31), 0), date(2024, 12, 31));
        assert_eq!(month_as_of(date(2024, 12, 31), 1), date(2025, 1, 31));
        assert_eq!(month_as_of(date(2024, 11, 30), 2), date(2025, 1, 31));
        // A mid-month first date still yields month ends.
        assert_eq!(month_as_of(date(2024, 1, 15), 0), jan);
        assert_eq!(checked_month_as_of(jan, u32::MAX), None);
    }

    #[test]
    fn headers_and_layout_are_exact() {
        let tmp = tempfile::tempdir().unwrap();
        let summary = generate(&opts(tmp.path(), 50, 3, 7), None).unwrap();
        assert_eq!(summary.users, 50);
        assert_eq!(summary.months, 3);
        assert_eq!(
            summary.as_of,
            vec![date(2024, 1, 31), date(2024, 2, 29), date(2024, 3, 31)]
        );
        for k in 0..3 {
            let dir = tmp.path().join(format!("month_00{k}"));
            assert_eq!(summary.dirs[k as usize], dir);
            let mut names: Vec<_> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            let mut expected: Vec<_> = FILE_NAMES.iter().map(|s| s.to_string()).collect();
            expected.sort();
            assert_eq!(names, expected);
        }
        let expected = [
            (
                "users.csv",
                "user_id,signup_date,user_gender,user_is_senior,has_family,has_dependents",
            ),
            (
                "subscriptions.csv",
                "user_id,months_active,plan_stream_tv,plan_stream_movies,contract_type,paperless_billing,monthly_fee,total_paid,net_service",
            ),
            (
                "usage_agg_30d.csv",
                "user_id,watch_hours_30d,avg_session_mins_7d,unique_devices_30d,skips_7d,rebuffer_events_7d",
            ),
            ("payments_agg_90d.csv", "user_id,failed_payments_90d"),
            (
                "support_agg_90d.csv",
                "user_id,support_tickets_90d,ticket_avg_resolution_hrs_90d",
            ),
            ("labels.csv", "user_id,churn_label"),
        ];
        for (file, header) in expected {
            let text = read(tmp.path(), 1, file);
            assert_eq!(text.lines().next().unwrap(), header, "{file}");
            let n_cols = header.split(',').count();
            assert_eq!(text.lines().count(), 51, "{file}");
            for line in text.lines() {
                assert_eq!(line.split(',').count(), n_cols, "{file}: {line}");
                assert!(!line.contains('"'), "{file}: {line}");
            }
        }
    }

    #[test]
    fn rows_are_well_formed_and_consistent_across_files_and_months() {
        let tmp = tempfile::tempdir().unwrap();
        generate(&opts(tmp.path(), 2000, 3, 11), None).unwrap();
        let ids = |k, f| -> Vec<String> {
            rows(&read(tmp.path(), k, f))
                .iter()
                .map(|r| r[0].to_string())
                .collect()
        };
        let reference = ids(0, "users.csv");
        for k in 0..3 {
            for f in FILE_NAMES {
                assert_eq!(ids(k, f), reference, "month {k} {f}");
            }
            assert_eq!(
                read(tmp.path(), k, "users.csv"),
                read(tmp.path(), 0, "users.csv")
            );
        }
        let as_of0 = date(2024, 1, 31);
        for r in rows(&read(tmp.path(), 0, "users.csv")) {
            let signup = NaiveDate::parse_from_str(r[1], "%Y-%m-%d").unwrap();
            assert!(signup <= as_of0, "{r:?}");
            assert!(["Male", "Female"].contains(&r[2]));
            for b in &r[3..] {
                assert!(["True", "False"].contains(b));
            }
        }
        let subs0_text = read(tmp.path(), 0, "subscriptions.csv");
        let subs0 = rows(&subs0_text);
        let subs2_text = read(tmp.path(), 2, "subscriptions.csv");
        let subs2 = rows(&subs2_text);
        for (a, b) in subs0.iter().zip(&subs2) {
            let ma: u32 = a[1].parse().unwrap();
            let mb: u32 = b[1].parse().unwrap();
            assert_eq!(mb, ma + 2);
            for r in [a, b] {
                assert!(["Month-to-month", "One year", "Two year"].contains(&r[4]));
                assert!(["True", "False"].contains(&r[5]));
                let fee: f64 = r[6].parse().unwrap();
                assert!((18.25..=118.75).contains(&fee), "{r:?}");
                assert_eq!(r[6].split('.').nth(1).unwrap().len(), 2);
                assert_eq!(r[7].split('.').nth(1).unwrap().len(), 2);
                let total: f64 = r[7].parse().unwrap();
                let months: f64 = r[1].parse().unwrap();
                assert!(total >= 0.0);
                if months >= 6.0 {
                    let ratio = total / (months * fee);
                    assert!((0.5..2.0).contains(&ratio), "{r:?}");
                }
            }
            let (ta, tb): (f64, f64) = (a[7].parse().unwrap(), b[7].parse().unwrap());
            assert!(tb > ta, "total_paid must grow: {a:?} {b:?}");
        }
        for r in rows(&read(tmp.path(), 1, "usage_agg_30d.csv")) {
            for f in &r[1..3] {
                let x: f64 = f.parse().unwrap();
                assert!(x >= 0.0 && x.is_finite());
            }
            for n in &r[3..] {
                n.parse::<u32>().unwrap();
            }
        }
        let support_text = read(tmp.path(), 1, "support_agg_90d.csv");
        let support = rows(&support_text);
        let mut nulls = 0;
        for r in &support {
            let tickets: u32 = r[1].parse().unwrap();
            if r[2].is_empty() {
                nulls += 1;
                assert_eq!(tickets, 0, "NULL hours only without tickets");
            } else {
                assert_eq!(r[2].split('.').nth(1).unwrap().len(), 1);
                assert!(r[2].parse::<f64>().unwrap() > 0.0);
            }
        }
        let share = nulls as f64 / support.len() as f64;
        assert!((0.01..0.10).contains(&share), "NULL hours share {share}");
        for r in rows(&read(tmp.path(), 1, "payments_agg_90d.csv")) {
            assert!(r[1].parse::<u32>().unwrap() <= 3);
        }
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let c = tempfile::tempdir().unwrap();
        let d = tempfile::tempdir().unwrap();
        generate(&opts(a.path(), 3000, 3, 42), None).unwrap();
        generate(&opts(b.path(), 3000, 3, 42), None).unwrap();
        generate(&opts(c.path(), 3000, 3, 43), None).unwrap();
        // Fewer months: the months written must be identical prefixes.
        generate(&opts(d.path(), 3000, 2, 42), None).unwrap();
        for k in 0..3 {
            for f in FILE_NAMES {
                let fa = fs::read(a.path().join(month_dir_name(k)).join(f)).unwrap();
                let fb = fs::read(b.path().join(month_dir_name(k)).join(f)).unwrap();
                let fc = fs::read(c.path().join(month_dir_name(k)).join(f)).unwrap();
                assert_eq!(fa, fb, "month {k} {f} differs between identical runs");
                assert_ne!(fa, fc, "month {k} {f} identical across seeds");
                if k < 2 {
                    let fd = fs::read(d.path().join(month_dir_name(k)).join(f)).unwrap();
                    assert_eq!(fa, fd, "month {k} {f} depends on the month count");
                }
            }
        }
        // Rerunning over existing output overwrites it identically.
        generate(&opts(a.path(), 3000, 3, 42), None).unwrap();
        assert_eq!(
            read(a.path(), 2, "labels.csv"),
            read(b.path(), 2, "labels.csv")
        );
    }

    #[test]
    fn ids_unique_and_well_formed_for_200k_users() {
        let tmp = tempfile::tempdir().unwrap();
        generate(&opts(tmp.path(), 200_000, 1, 2024), None).unwrap();
        let text = read(tmp.path(), 0, "labels.csv");
        let mut seen = HashSet::with_capacity(200_000);
        for line in text.lines().skip(1) {
            let id = line.split(',').next().unwrap();
            let b = id.as_bytes();
            assert_eq!(b.len(), 10, "{id}");
            assert!(b[..4].iter().all(u8::is_ascii_digit), "{id}");
            assert_eq!(b[4], b'-');
            assert!(b[5..].iter().all(u8::is_ascii_uppercase), "{id}");
            assert!(seen.insert(id.to_string()), "duplicate {id}");
        }
        assert_eq!(seen.len(), 200_000);
        assert_eq!(user_id(2024, 0), text.lines().nth(1).unwrap()[..10]);
    }

    #[test]
    fn id_bijection_is_injective_on_a_dense_block() {
        // Across many seeds, dense index ranges never collide.
        for seed in 0..20 {
            let codec = IdCodec::new(seed);
            let mut seen = HashSet::new();
            for i in (0..20_000).chain(ID_SPACE - 20_000..ID_SPACE) {
                assert!(seen.insert(codec.encode(i)), "seed {seed} index {i}");
            }
        }
    }

    #[test]
    fn stream_nulls_go_with_no_internet_and_churn_rate_is_plausible() {
        let tmp = tempfile::tempdir().unwrap();
        let months = 3;
        generate(&opts(tmp.path(), 20_000, months, 5), None).unwrap();
        for k in 0..months {
            let subs_text = read(tmp.path(), k, "subscriptions.csv");
            let subs = rows(&subs_text);
            let mut nulls = 0;
            for r in &subs {
                let tv_null = r[2].is_empty();
                assert_eq!(tv_null, r[3].is_empty(), "{r:?}");
                assert_eq!(tv_null, r[8] == "No", "{r:?}");
                if !tv_null {
                    assert!(["True", "False"].contains(&r[2]));
                    assert!(["True", "False"].contains(&r[3]));
                }
                nulls += usize::from(tv_null);
            }
            let share = nulls as f64 / subs.len() as f64;
            assert!((0.15..0.30).contains(&share), "NULL share {share}");

            let labels_text = read(tmp.path(), k, "labels.csv");
            let labels = rows(&labels_text);
            let churned: Vec<bool> = labels.iter().map(|r| r[1] == "True").collect();
            let rate = churned.iter().filter(|c| **c).count() as f64 / churned.len() as f64;
            assert!(
                (0.20..0.30).contains(&rate),
                "churn rate {rate} in month {k}"
            );

            // The signal a model should learn: month-to-month churns far more
            // than two-year contracts, short tenure more than long.
            let rate_where = |pred: &dyn Fn(&Vec<&str>) -> bool| {
                let (n, c) = subs
                    .iter()
                    .zip(&churned)
                    .filter(|(r, _)| pred(r))
                    .fold((0, 0), |(n, c), (_, ch)| (n + 1, c + usize::from(*ch)));
                c as f64 / n as f64
            };
            let m2m = rate_where(&|r| r[4] == "Month-to-month");
            let two = rate_where(&|r| r[4] == "Two year");
            assert!(m2m > 3.0 * two, "m2m {m2m} two-year {two}");
            let short = rate_where(&|r| r[1].parse::<u32>().unwrap() < 6);
            let long = rate_where(&|r| r[1].parse::<u32>().unwrap() >= 48);
            assert!(short > 2.0 * long, "short {short} long {long}");
        }
        // Labels evolve: some users change label between months.
        let l0 = read(tmp.path(), 0, "labels.csv");
        let l1 = read(tmp.path(), 1, "labels.csv");
        let changed = l0.lines().zip(l1.lines()).filter(|(a, b)| a != b).count();
        assert!(
            changed > 100 && changed < 10_000,
            "{changed} labels changed"
        );
    }

    #[test]
    fn invalid_options_are_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path();
        assert!(matches!(
            generate(&opts(p, 0, 1, 1), None),
            Err(GenerateError::NoUsers)
        ));
        assert!(matches!(
            generate(&opts(p, 1, 0, 1), None),
            Err(GenerateError::NoMonths)
        ));
        assert!(matches!(
            generate(&opts(p, ID_SPACE + 1, 1, 1), None),
            Err(GenerateError::TooManyUsers { .. })
        ));
        assert!(matches!(
            generate(&opts(p, 1, MAX_MONTHS + 1, 1), None),
            Err(GenerateError::TooManyMonths { .. })
        ));
        let mut o = opts(p, 1, 1, 1);
        o.first_as_of = NaiveDate::MIN;
        assert!(matches!(
            generate(&o, None),
            Err(GenerateError::DateOutOfRange { .. })
        ));
        // Nothing was written by the rejected runs.
        assert_eq!(fs::read_dir(p).unwrap().count(), 0);
    }

    #[test]
    fn refuses_foreign_files_but_overwrites_generated_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let month1 = tmp.path().join("month_001");
        fs::create_dir_all(&month1).unwrap();
        fs::write(month1.join("labels.csv"), "stale").unwrap();
        generate(&opts(tmp.path(), 10, 2, 1), None).unwrap();
        assert!(read(tmp.path(), 1, "labels.csv").starts_with("user_id,churn_label\n"));

        fs::write(month1.join("notes.txt"), "mine").unwrap();
        let err = generate(&opts(tmp.path(), 10, 2, 1), None).unwrap_err();
        assert!(matches!(err, GenerateError::ForeignEntry { .. }), "{err}");
        assert!(err.to_string().contains("notes.txt"));

        // An output path that is a file is an I/O error naming the path.
        let file = tmp.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = generate(&opts(&file, 10, 1, 1), None).unwrap_err();
        match err {
            GenerateError::Io { path, .. } => assert!(path.starts_with(&file)),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn many_months_use_several_passes_with_identical_results() {
        let a = tempfile::tempdir().unwrap();
        let months = MONTHS_PER_PASS + 2;
        let summary = generate(&opts(a.path(), 30, months, 9), None).unwrap();
        assert_eq!(summary.dirs.len(), months as usize);
        let b = tempfile::tempdir().unwrap();
        generate(&opts(b.path(), 30, 2, 9), None).unwrap();
        for f in FILE_NAMES {
            assert_eq!(read(a.path(), 1, f), read(b.path(), 1, f));
        }
        let last_text = read(a.path(), months - 1, "subscriptions.csv");
        let last = rows(&last_text);
        let first_text = read(a.path(), 0, "subscriptions.csv");
        let first = rows(&first_text);
        for (x, y) in first.iter().zip(&last) {
            let (m0, m1): (u32, u32) = (x[1].parse().unwrap(), y[1].parse().unwrap());
            assert_eq!(m1, m0 + months - 1);
        }
    }

    #[test]
    fn progress_reaches_user_count() {
        let tmp = tempfile::tempdir().unwrap();
        let pb = indicatif::ProgressBar::hidden();
        generate(&opts(tmp.path(), 25_000, 1, 3), Some(&pb)).unwrap();
        assert_eq!(pb.position(), 25_000);
        assert_eq!(pb.length(), Some(25_000));
    }

    #[test]
    fn exp_det_matches_std() {
        for i in -400..=400 {
            let x = f64::from(i) / 20.0;
            let rel = (exp_det(x) - x.exp()).abs() / x.exp();
            assert!(rel < 1e-12, "x={x} rel={rel}");
        }
    }

    /// `cargo test --release --lib generate::tests::timing -- --ignored --nocapture`
    #[test]
    #[ignore = "timing, run manually in release"]
    fn timing_one_million_users_two_months() {
        let tmp = tempfile::tempdir().unwrap();
        let start = std::time::Instant::now();
        generate(&opts(tmp.path(), 1_000_000, 2, 1), None).unwrap();
        eprintln!("1,000,000 users x 2 months: {:?}", start.elapsed());
    }
}
