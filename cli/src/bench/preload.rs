//! `whistle bench --preload N`: N finished cases stored before the services start, through each
//! service's own storage layer (see each service's `preload` module). A case: reported to intake
//! (one of the demo catalogue's auto-whistled routes, in one of its grids), whistled by dispatch to
//! the route's lead and co-departments, acknowledged, checked in where the route requires it,
//! resolved, verified by its community and CLOSED; the gateway's notice logs and evaluation's facts
//! hold what the events of that history told them. Cases are reported 30 s apart, the last one a
//! day before now, so the history spans N × 30 s (100,000 cases: about 35 days; 1,000,000: about a
//! year) and evaluation counts them in the periods they fall in.
//!
//! Per chunk of cases: intake stores the reports and cases and gives its `case.reported` events to
//! dispatch, which works each case to CLOSED and gives every event it published to the gateway,
//! evaluation and intake's lifecycle consumer, which apply them concurrently (each its own
//! database) while the next chunk is made. One transaction per service and chunk.

use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use whistle_intake::preload::PreloadCase;
use whistle_platform::clock::to_millis;
use whistle_platform::config::DatabaseConfig;
use whistle_platform::envelope::Event;
use whistle_proto::types::Region;

/// Cases per transaction.
const CHUNK: usize = 2_000;
/// Between two preloaded reports.
const SPACING_MS: i64 = 30_000;

/// What the preload stored and how long it took.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PreloadResult {
    pub cases: usize,
    pub seconds: f64,
    /// Per service, rows in its main tables after loading.
    pub rows: BTreeMap<String, BTreeMap<String, u64>>,
    /// Per department, the last sequence of its notice log: the bench's department systems
    /// subscribe after it.
    #[serde(skip)]
    pub after_sequence: BTreeMap<String, u64>,
}

/// A place of the catalogue where a category's route whistles on its own.
#[derive(Debug, Clone)]
struct Slot {
    category_code: String,
    region: Region,
}

/// Every (auto-whistled route's category, grid in the route's area) of the catalogue.
fn slots(catalogue: &str) -> anyhow::Result<Vec<Slot>> {
    let catalogue: serde_json::Value = serde_json::from_str(catalogue)?;
    let list = |key: &str| {
        catalogue[key]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
    };
    let text = |value: &serde_json::Value, key: &str| value[key].as_str().unwrap_or("").to_string();
    let communities: BTreeMap<String, String> = list("communities")
        .map(|community| (text(&community, "code"), text(&community, "street_code")))
        .collect();
    let streets: BTreeMap<String, (String, String)> = list("streets")
        .map(|street| {
            (
                text(&street, "code"),
                (text(&street, "slug"), text(&street, "district_code")),
            )
        })
        .collect();
    let districts: BTreeMap<String, String> = list("districts")
        .map(|district| (text(&district, "code"), text(&district, "city_code")))
        .collect();
    let mut regions = Vec::new();
    for grid in list("grids") {
        let community_code = text(&grid, "community_code");
        let Some(street_code) = communities.get(&community_code) else {
            continue;
        };
        let Some((street_slug, district_code)) = streets.get(street_code) else {
            continue;
        };
        let Some(city_code) = districts.get(district_code) else {
            continue;
        };
        regions.push(Region {
            city_code: city_code.clone(),
            district_code: district_code.clone(),
            street_code: street_code.clone(),
            street_slug: street_slug.clone(),
            community_code,
            grid_code: text(&grid, "code"),
        });
    }
    let mut slots = Vec::new();
    for route in list("routes") {
        if route["auto_whistle"].as_bool() != Some(true) {
            continue;
        }
        let area = text(&route, "area_code");
        for region in regions
            .iter()
            .filter(|region| region.grid_code.starts_with(&area))
        {
            slots.push(Slot {
                category_code: text(&route, "category_code"),
                region: region.clone(),
            });
        }
    }
    // one slot per (category, grid): the most specific route of it is dispatch's choice
    slots.sort_by(|a, b| {
        (&a.category_code, &a.region.grid_code).cmp(&(&b.category_code, &b.region.grid_code))
    });
    slots.dedup_by(|a, b| {
        a.category_code == b.category_code && a.region.grid_code == b.region.grid_code
    });
    if slots.is_empty() {
        anyhow::bail!("the catalogue has no auto-whistled route in any of its grids");
    }
    Ok(slots)
}

/// Case `index` of the history: its own place (a lattice of about 10 m, west of the bench's
/// reports, so none of the bench's reports finds it a recurrence), its slot, its time.
fn case(index: usize, count: usize, slots: &[Slot], end_ms: i64) -> PreloadCase {
    let slot = &slots[index % slots.len()];
    let (row, column) = ((index % 997) as f64, ((index / 997) % 997) as f64);
    PreloadCase {
        case_id: format!("preload-{index:08}"),
        report_id: format!("preload-report-{index:08}"),
        request_id: format!("preload-{index:08}"),
        category_code: slot.category_code.clone(),
        region: slot.region.clone(),
        lat: 32.60 + row * 0.0001,
        lng: 110.70 - column * 0.0001,
        address: format!("历史案件 {index}"),
        description: format!("preloaded case {index}"),
        reported_at_ms: end_ms - (count - index) as i64 * SPACING_MS,
    }
}

async fn connect(url: &str) -> anyhow::Result<DatabaseConnection> {
    Ok(whistle_platform::db::connect(&DatabaseConfig {
        acquire_timeout_ms: 30_000,
        read_connections: 1,
        ..DatabaseConfig::at(url, 4)
    })
    .await?)
}

type Chunk = Arc<Vec<(String, Event)>>;

/// A consumer stage: applies each chunk's events to one service's database.
fn stage<F, Fut>(
    name: &'static str,
    done: Arc<AtomicUsize>,
    apply: F,
) -> (
    tokio::sync::mpsc::Sender<(usize, Chunk)>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)
where
    F: Fn(Chunk) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<(usize, Chunk)>(2);
    let task = tokio::spawn(async move {
        while let Some((cases, events)) = receiver.recv().await {
            apply(events)
                .await
                .map_err(|error| error.context(format!("preloading {name}")))?;
            done.fetch_add(cases, Ordering::Relaxed);
        }
        anyhow::Ok(())
    });
    (sender, task)
}

/// Loads `count` finished cases into the four services' databases (`urls` by service name), which
/// must be fresh; the services must not run yet.
pub async fn run(
    urls: &BTreeMap<&str, String>,
    catalogue_file: &Path,
    count: usize,
) -> anyhow::Result<PreloadResult> {
    let started = Instant::now();
    let slots = slots(&std::fs::read_to_string(catalogue_file)?)?;
    let now = chrono::Utc::now();
    let now_ms = to_millis(now);
    let end_ms = now_ms - 24 * 3_600_000;
    let intake = connect(&urls["intake"]).await?;
    let dispatch = connect(&urls["dispatch"]).await?;
    let gateway = connect(&urls["department-gateway"]).await?;
    let evaluation = connect(&urls["evaluation"]).await?;
    whistle_intake::preload::prepare(&intake).await?;
    let mut dispatcher =
        whistle_dispatch::preload::Preloader::new(&dispatch, catalogue_file, now).await?;
    whistle_department_gateway::preload::prepare(&gateway).await?;
    whistle_evaluation::preload::prepare(&evaluation, catalogue_file).await?;

    let dispatched = Arc::new(AtomicUsize::new(0));
    let counters: [Arc<AtomicUsize>; 3] = Default::default();
    let (to_gateway, gateway_task) = stage("department-gateway", counters[0].clone(), {
        let db = gateway.clone();
        move |events: Chunk| {
            let db = db.clone();
            async move { whistle_department_gateway::preload::apply(&db, &events, now_ms).await }
        }
    });
    let (to_evaluation, evaluation_task) = stage("evaluation", counters[1].clone(), {
        let db = evaluation.clone();
        move |events: Chunk| {
            let db = db.clone();
            async move { whistle_evaluation::preload::apply(&db, &events, now_ms).await }
        }
    });
    let (to_intake, intake_task) = stage("intake (case lifecycle)", counters[2].clone(), {
        let db = intake.clone();
        move |events: Chunk| {
            let db = db.clone();
            async move { whistle_intake::preload::apply_case_events(&db, &events, now_ms).await }
        }
    });
    let progress = tokio::spawn({
        let dispatched = dispatched.clone();
        let counters = counters.clone();
        async move {
            let mut last = (Instant::now(), 0usize);
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let loaded = counters
                    .iter()
                    .map(|counter| counter.load(Ordering::Relaxed))
                    .min()
                    .unwrap_or(0);
                let elapsed = last.0.elapsed().as_secs_f64();
                eprintln!(
                    "preload: {loaded} of {count} cases loaded in every service ({:.0} cases/s now, {:.0} on average), {} through dispatch",
                    (loaded - last.1) as f64 / elapsed.max(0.001),
                    loaded as f64 / started.elapsed().as_secs_f64(),
                    dispatched.load(Ordering::Relaxed)
                );
                last = (Instant::now(), loaded);
            }
        }
    });

    let mut made = 0;
    let mut intake_relay = whistle_platform::outbox::HistoryRelay::default();
    let produced: anyhow::Result<()> = async {
        while made < count {
            let size = CHUNK.min(count - made);
            let cases: Vec<PreloadCase> = (made..made + size)
                .map(|index| case(index, count, &slots, end_ms))
                .collect();
            let reported =
                whistle_intake::preload::open_cases(&intake, &mut intake_relay, &cases, now_ms)
                    .await?;
            let published = dispatcher.apply(&dispatch, &reported, now).await?;
            dispatched.fetch_add(size, Ordering::Relaxed);
            let mut events = reported;
            events.extend(published);
            let events: Chunk = Arc::new(events);
            for sender in [&to_gateway, &to_evaluation, &to_intake] {
                if sender.send((size, events.clone())).await.is_err() {
                    // the stage failed: its error is reported below
                    return Ok(());
                }
            }
            made += size;
        }
        Ok(())
    }
    .await;
    drop((to_gateway, to_evaluation, to_intake));
    let stages = [gateway_task.await, evaluation_task.await, intake_task.await];
    progress.abort();
    produced?;
    for stage in stages {
        stage??;
    }
    let after_sequence = whistle_department_gateway::preload::finish(&gateway, now_ms).await?;
    let seconds = started.elapsed().as_secs_f64();
    let mut rows = BTreeMap::new();
    rows.insert(
        "intake".to_string(),
        whistle_intake::preload::row_counts(&intake).await?,
    );
    rows.insert(
        "dispatch".to_string(),
        whistle_dispatch::preload::row_counts(&dispatch).await?,
    );
    rows.insert(
        "department-gateway".to_string(),
        whistle_department_gateway::preload::row_counts(&gateway).await?,
    );
    rows.insert(
        "evaluation".to_string(),
        whistle_evaluation::preload::row_counts(&evaluation).await?,
    );
    let databases = [intake, dispatch, gateway, evaluation];
    if whistle_platform::db::is_postgres(&databases[0]) {
        // a bulk load leaves PostgreSQL's tables as no deployment's are: without planner statistics
        // (its first plans over them are scans), without visibility maps, and with every row's hint
        // bits still to set, which the first read of each page then writes. A deployment's
        // autovacuum has done that long before; `VACUUM (ANALYZE)` does it here (SQLite keeps none
        // of these and needs none)
        for db in &databases {
            db.execute_unprepared("VACUUM (ANALYZE)").await?;
        }
        // and the pages the load and the vacuums dirtied, written back by the checkpoints of the
        // measured run, would slow its commits: written now, after the last vacuum (one checkpoint
        // is the server's; it needs superuser or pg_checkpoint, and without them the run goes on,
        // said)
        if let Err(error) = databases[0].execute_unprepared("CHECKPOINT").await {
            eprintln!(
                "preload: CHECKPOINT refused ({error}); the run starts with the load's pages unwritten"
            );
        }
    }
    for db in databases {
        db.close().await?;
    }
    eprintln!(
        "preload: {count} cases in {seconds:.1} s ({:.0} cases/s)",
        count as f64 / seconds.max(0.001)
    );
    Ok(PreloadResult {
        cases: count,
        seconds,
        rows,
        after_sequence,
    })
}
