//! End-to-end tests of tenants through the CLI: the `tenant` commands, each quota's refusal,
//! isolation between tenants, deletion, the running-jobs cap held across worker processes, and
//! `cancel` stopping a running guest. Every check is made through the CLI, except where only
//! Redis itself can tell (which keys are left after a delete, whether a token still works).

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context as _;
use redis::Commands as _;
use serde_json::Value;

use support::*;
use wasm_runner::commands::EXIT_USAGE;
use wasm_runner_tests::{TestRedis, guest};

/// Creates tenant `name` with `flags` and returns its API token.
fn create_tenant(cli: &Cli, name: &str, flags: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["tenant", "create", name];
    args.extend_from_slice(flags);
    Ok(cli.run(&args)?.trim().to_owned())
}

/// The created tenants as `tenant list --json` shows them, by name.
fn tenants(cli: &Cli) -> anyhow::Result<HashMap<String, Value>> {
    let list = cli.json(&["tenant", "list", "--json"])?;
    let list = list
        .as_array()
        .context("`tenant list --json` is not an array")?;
    list.iter()
        .map(|tenant| {
            let name = tenant["name"].as_str().context("a tenant has no name")?;
            Ok((name.to_owned(), tenant["quotas"].clone()))
        })
        .collect()
}

/// The path of a guest component as a string, for `upload`.
fn guest_path(package: &str) -> anyhow::Result<String> {
    let path = guest(package);
    Ok(path.to_str().context("guest path is not UTF-8")?.to_owned())
}

/// The tenant an API token belongs to, asked of the registry the HTTP API authenticates with.
fn token_owner(cli: &Cli, token: &str) -> anyhow::Result<Option<String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let conn = wasm_runner::queue::connect(&cli.url).await?;
        let registry = wasm_runner::queue::Registry::new(conn);
        Ok(registry
            .authenticate(token)
            .await?
            .map(|record| record.name))
    })
}

/// The most attempts of `jobs` that were running at one moment, from their recorded start and
/// end times (Redis server time). An attempt that ends in the millisecond another starts does
/// not overlap it: a freed slot can be taken again within the same millisecond.
fn max_overlap(jobs: &[Value]) -> anyhow::Result<usize> {
    let mut events = Vec::new();
    for job in jobs {
        for record in attempts(job) {
            let start = record["started_at_ms"].as_u64().context("no start time")?;
            let end = record["ended_at_ms"].as_u64().context("no end time")?;
            anyhow::ensure!(start <= end, "an attempt ends before it starts: {job:#}");
            // Ends (0) sort before starts (1) at the same millisecond.
            events.push((start, 1));
            events.push((end, 0));
        }
    }
    events.sort_unstable();
    let (mut running, mut most) = (0_usize, 0);
    for (_, is_start) in events {
        if is_start == 1 {
            running += 1;
            most = most.max(running);
        } else {
            running -= 1;
        }
    }
    Ok(most)
}

/// Waits until every job of `ids` (all of `cli`'s tenant's jobs) has succeeded, and returns
/// them, each checked to have run exactly once.
fn succeeded_once(cli: &Cli, ids: &BTreeSet<String>) -> anyhow::Result<Vec<Value>> {
    let what = format!("{} jobs of tenant `{}` to succeed", ids.len(), cli.tenant());
    wait_for(&what, Duration::from_secs(30), || {
        Ok((cli.count("succeeded")? == ids.len() as u64).then_some(()))
    })?;
    let mut jobs = Vec::new();
    for id in ids {
        let job = cli.job(id)?;
        assert_eq!(job["state"], "succeeded", "{job:#}");
        assert_eq!(job["attempt"], 1, "{job:#}");
        assert_eq!(attempts(&job).len(), 1, "ran exactly once: {job:#}");
        assert_eq!(count_class(&job, "ok"), 1, "{job:#}");
        jobs.push(job);
    }
    Ok(jobs)
}

/// A tenant capped at 2 running jobs never has more than 2 running across two workers with 4
/// slots each, while a tenant without a cap on the same workers at the same time does.
#[test]
fn running_cap_holds_across_two_serve_processes() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let cli = Cli::new(&redis);
    create_tenant(&cli, "acme", &["--max-running", "2"])?;
    create_tenant(&cli, "open", &[])?;
    let (acme, open) = (cli.as_tenant("acme"), cli.as_tenant("open"));
    // Everything is queued before the workers start, so each tenant has 8 jobs ready at once
    // and only the cap can keep the capped one from running more than 2.
    let mut ids = HashMap::new();
    for tenant in [&acme, &open] {
        tenant.upload("slow", "example-slow")?;
        let tenant_ids = (0..8)
            .map(|_| tenant.enqueue("slow", r#"{"ms": 600}"#))
            .collect::<anyhow::Result<BTreeSet<_>>>()?;
        assert_eq!(tenant_ids.len(), 8, "every enqueue made a new job");
        ids.insert(tenant.tenant().to_owned(), tenant_ids);
    }

    let _one = Worker::start(&cli, "one", &["--concurrency", "4"])?;
    let _two = Worker::start(&cli, "two", &["--concurrency", "4"])?;
    let capped = succeeded_once(&acme, &ids["acme"])?;
    let uncapped = succeeded_once(&open, &ids["open"])?;

    let capped_overlap = max_overlap(&capped)?;
    let uncapped_overlap = max_overlap(&uncapped)?;
    // Reported, not asserted: a worker that frees one of acme's slots may well take it again
    // before the other worker retries, so one worker can run all 8.
    let mut by_worker: HashMap<&str, usize> = HashMap::new();
    for job in &capped {
        *by_worker
            .entry(attempts(job)[0]["worker"].as_str().unwrap_or_default())
            .or_default() += 1;
    }
    eprintln!(
        "most running at once: acme {capped_overlap}, open {uncapped_overlap}; \
         acme jobs per worker: {by_worker:?}"
    );
    assert!(capped_overlap >= 1, "no attempt was recorded");
    assert!(
        capped_overlap <= 2,
        "{capped_overlap} of acme's jobs ran at once under a cap of 2"
    );
    // The control: without the cap, the same workers run more than 2 at once, so the check
    // above can see a broken cap.
    assert!(
        uncapped_overlap >= 3,
        "only {uncapped_overlap} uncapped jobs ran at once on 8 slots"
    );
    acme.assert_consistent()?;
    open.assert_consistent()?;
    Ok(())
}

/// `tenant create` prints a token alone, refuses a second create and bad quotas with messages
/// that name the problem, and `list`, `update` and `rotate-token` do what they say.
#[test]
fn tenant_commands_manage_tokens_and_quotas() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let cli = Cli::new(&redis);

    let token = create_tenant(&cli, "acme", &["--max-running", "3", "--max-timeout", "5m"])?;
    assert!(token.starts_with("wrt_"), "{token}");
    assert_eq!(token.len(), 68, "`wrt_` and 64 hex digits: {token}");
    assert!(token[4..].chars().all(|c| c.is_ascii_hexdigit()), "{token}");
    assert_refused(
        &cli,
        &["tenant", "create", "acme"],
        EXIT_USAGE,
        "tenant `acme` already exists",
    )?;

    let quotas = &tenants(&cli)?["acme"];
    assert_eq!(quotas["max_running"], 3, "{quotas:#}");
    assert_eq!(quotas["max_timeout_ms"], 300_000, "{quotas:#}");
    assert_eq!(quotas["max_queued"], Value::Null, "{quotas:#}");

    cli.run(&["tenant", "update", "acme", "--max-queued", "5"])?;
    let quotas = &tenants(&cli)?["acme"];
    assert_eq!(quotas["max_queued"], 5, "{quotas:#}");
    assert_eq!(quotas["max_running"], 3, "flags left out stay: {quotas:#}");
    cli.run(&["tenant", "update", "acme", "--max-queued", "unlimited"])?;
    let quotas = &tenants(&cli)?["acme"];
    assert_eq!(quotas["max_queued"], Value::Null, "{quotas:#}");
    assert_eq!(quotas["max_timeout_ms"], 300_000, "{quotas:#}");

    let rotated = cli.run(&["tenant", "rotate-token", "acme"])?;
    let rotated = rotated.trim();
    assert!(rotated.starts_with("wrt_"), "{rotated}");
    assert_eq!(rotated.len(), 68, "{rotated}");
    assert_ne!(rotated, token, "rotating made a new token");
    assert_eq!(token_owner(&cli, rotated)?.as_deref(), Some("acme"));
    assert_eq!(
        token_owner(&cli, &token)?,
        None,
        "the old token still works"
    );

    for (flags, expected) in [
        (
            ["--max-running", "0"],
            "max running jobs must be at least 1",
        ),
        (["--max-memory", "64"], "`64` has no unit"),
        (
            ["--max-memory", "8GiB"],
            "a memory ceiling of 8.0 GiB is out of range",
        ),
    ] {
        let mut args = vec!["tenant", "create", "bad"];
        args.extend_from_slice(&flags);
        assert_refused(&cli, &args, EXIT_USAGE, expected)?;
    }
    assert_refused(
        &cli,
        &["tenant", "update", "acme", "--max-running", "0"],
        EXIT_USAGE,
        "max running jobs must be at least 1",
    )?;
    let all = tenants(&cli)?;
    assert_eq!(
        all.keys().collect::<Vec<_>>(),
        ["acme"],
        "refused creates made nothing"
    );
    assert_eq!(
        all["acme"]["max_running"], 3,
        "a refused update changed nothing"
    );

    for args in [
        ["tenant", "update", "ghost", "--max-queued", "5"].as_slice(),
        &["tenant", "rotate-token", "ghost"],
        &["tenant", "delete", "ghost"],
    ] {
        assert_refused(&cli, args, EXIT_USAGE, "there is no tenant `ghost`")?;
    }
    // Through the flag and through `WASM_RUNNER_TENANT` alike.
    assert_refused(
        &cli,
        &["enqueue", "hello", "--payload", "{}", "--tenant", "ghost"],
        EXIT_USAGE,
        "there is no tenant `ghost`; create it with `wasm-runner tenant create ghost`",
    )?;
    assert_refused(
        &cli.as_tenant("ghost"),
        &["tasks"],
        EXIT_USAGE,
        "create it with `wasm-runner tenant create ghost`",
    )?;
    Ok(())
}

/// Each quota refuses what is over it with a message that names it, on upload and on enqueue,
/// and writes nothing; a full queued-jobs quota takes jobs again once workers drain it.
#[test]
fn each_quota_refuses_with_its_own_message() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let cli = Cli::new(&redis);
    let hello = guest_path("example-hello")?;
    let big = format!(r#"{{"name": "{}"}}"#, "a".repeat(2048));

    // The payload limit is the tenant's: the enqueue's own `--max-payload` is left at 1MiB.
    create_tenant(&cli, "payload", &["--max-payload", "1KiB"])?;
    let payload = cli.as_tenant("payload");
    payload.upload("hello", "example-hello")?;
    assert_refused(
        &payload,
        &["enqueue", "hello", "--payload", &big],
        EXIT_USAGE,
        "over the limit of 1024 bytes",
    )?;
    payload.enqueue("hello", r#"{"name": "small"}"#)?;
    assert_eq!(
        payload.count("queued")?,
        1,
        "only the small payload was enqueued"
    );

    create_tenant(&cli, "component", &["--max-component-size", "10KiB"])?;
    let component = cli.as_tenant("component");
    assert_refused(
        &component,
        &["upload", &hello, "--name", "hello"],
        EXIT_USAGE,
        "over tenant `component`'s limit of 10.0 KiB",
    )?;
    assert_eq!(component.json(&["tasks", "--json"])?, Value::Array(vec![]));

    // The ceiling applies to a task's defaults and to an enqueue's overrides alike.
    create_tenant(&cli, "memory", &["--max-memory", "32MiB"])?;
    let memory = cli.as_tenant("memory");
    let ceiling = "over this tenant's ceiling of 32.0 MiB";
    assert_refused(
        &memory,
        &["upload", &hello, "--name", "hello", "--memory", "64MiB"],
        EXIT_USAGE,
        ceiling,
    )?;
    memory.run(&["upload", &hello, "--name", "hello", "--memory", "32MiB"])?;
    assert_refused(
        &memory,
        &["enqueue", "hello", "--payload", "{}", "--memory", "64MiB"],
        EXIT_USAGE,
        ceiling,
    )?;

    create_tenant(&cli, "timeout", &["--max-timeout", "5s"])?;
    let timeout = cli.as_tenant("timeout");
    let ceiling = "over this tenant's ceiling of 5000 ms";
    assert_refused(
        &timeout,
        &["upload", &hello, "--name", "hello", "--timeout", "10s"],
        EXIT_USAGE,
        ceiling,
    )?;
    timeout.run(&["upload", &hello, "--name", "hello", "--timeout", "5s"])?;
    assert_refused(
        &timeout,
        &["enqueue", "hello", "--payload", "{}", "--timeout", "10s"],
        EXIT_USAGE,
        ceiling,
    )?;
    for (tenant, refused) in [(&memory, "--memory 64MiB"), (&timeout, "--timeout 10s")] {
        let tasks = tenant.json(&["tasks", "--all-versions", "--json"])?;
        let tasks = tasks.as_array().context("`tasks --json` is not an array")?;
        assert_eq!(
            tasks.len(),
            1,
            "the upload with {refused} stored nothing: {tasks:?}"
        );
        assert_eq!(
            tenant.count("queued")?,
            0,
            "the enqueue with {refused} added nothing"
        );
    }

    create_tenant(&cli, "queued", &["--max-queued", "3"])?;
    let queued = cli.as_tenant("queued");
    queued.upload("hello", "example-hello")?;
    for i in 0..3 {
        queued.enqueue("hello", &format!(r#"{{"name": "n{i}"}}"#))?;
    }
    assert_refused(
        &queued,
        &["enqueue", "hello", "--payload", "{}"],
        EXIT_USAGE,
        "tenant `queued` has 3 jobs waiting and a quota of 3",
    )?;
    assert_eq!(
        queued.count("queued")?,
        3,
        "the refused enqueue added nothing"
    );
    let _worker = Worker::start(&cli, "w", &["--tenant", "queued"])?;
    wait_for("the 3 jobs to succeed", Duration::from_secs(30), || {
        Ok((queued.count("succeeded")? == 3).then_some(()))
    })?;
    let id = queued.enqueue("hello", r#"{"name": "again"}"#)?;
    wait_for("the 4th job to succeed", Duration::from_secs(30), || {
        Ok((queued.job(&id)?["state"] == "succeeded").then_some(()))
    })?;
    queued.assert_consistent()?;
    Ok(())
}

/// One tenant cannot see, requeue, cancel or overwrite another's jobs and tasks, even knowing
/// a job id and using the same task name.
#[test]
fn tenants_are_isolated_through_the_cli() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let cli = Cli::new(&redis);
    create_tenant(&cli, "acme", &[])?;
    create_tenant(&cli, "globex", &[])?;
    let (acme, globex) = (cli.as_tenant("acme"), cli.as_tenant("globex"));
    acme.upload("hello", "example-hello")?;
    let id = acme.enqueue("hello", r#"{"name": "acme"}"#)?;
    let acme_job = acme.job(&id)?;
    assert_eq!(acme_job["state"], "queued", "{acme_job:#}");
    let acme_tasks = acme.json(&["tasks", "--all-versions", "--json"])?;

    let output = globex.output(&["job", &id, "--json"])?;
    assert_eq!(
        output.status.code(),
        Some(i32::from(EXIT_USAGE)),
        "{}",
        stderr(&output)
    );
    assert!(output.stdout.is_empty(), "globex was shown acme's job");
    assert!(
        stderr(&output).contains("of tenant `globex`"),
        "{}",
        stderr(&output)
    );
    assert_eq!(globex.ids("queued")?, BTreeSet::new());
    assert_eq!(globex.count("queued")?, 0);
    assert_refused(
        &globex,
        &["requeue", &id],
        EXIT_USAGE,
        "not in the failed set",
    )?;
    assert_refused(&globex, &["cancel", &id], EXIT_USAGE, "there is no job")?;
    assert_eq!(globex.json(&["tasks", "--json"])?, Value::Array(vec![]));

    // A different component under the same name: sharing keys would change acme's digest.
    globex.upload("hello", "example-slow")?;
    let globex_tasks = globex.json(&["tasks", "--json"])?;
    assert_eq!(globex_tasks[0]["name"], "hello", "{globex_tasks:#}");
    assert_eq!(globex_tasks[0]["version"], 1, "{globex_tasks:#}");
    assert_ne!(
        globex_tasks[0]["digest"], acme_tasks[0]["digest"],
        "{globex_tasks:#}"
    );
    assert_eq!(
        acme.json(&["tasks", "--all-versions", "--json"])?,
        acme_tasks,
        "globex's upload changed acme's tasks"
    );
    assert_eq!(
        acme.job(&id)?,
        acme_job,
        "globex's commands changed acme's job"
    );
    assert_eq!(acme.ids("queued")?, BTreeSet::from([id]));
    acme.assert_consistent()?;
    globex.assert_consistent()?;
    Ok(())
}

/// The keys of Redis matching `pattern`.
fn keys(redis: &TestRedis, pattern: &str) -> anyhow::Result<Vec<String>> {
    let mut conn = redis::Client::open(redis.url())?.get_connection()?;
    let found = conn
        .scan_match::<_, String>(pattern)?
        .collect::<Result<_, _>>()?;
    Ok(found)
}

/// `tenant delete` refuses while the tenant has jobs, unless forced; then the tenant, its token
/// and every key it had are gone, and another tenant's are untouched.
#[test]
fn delete_refuses_with_jobs_unless_forced() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let cli = Cli::new(&redis);
    let token = create_tenant(&cli, "acme", &[])?;
    create_tenant(&cli, "globex", &[])?;
    let (acme, globex) = (cli.as_tenant("acme"), cli.as_tenant("globex"));
    for tenant in [&acme, &globex] {
        tenant.upload("hello", "example-hello")?;
        tenant.enqueue("hello", r#"{"name": "waiting"}"#)?;
    }
    let globex_keys = keys(&redis, "wr:{globex*")?;
    assert!(!globex_keys.is_empty(), "the scan finds a tenant's keys");
    assert!(
        !keys(&redis, "wr:{acme*")?.is_empty(),
        "the scan finds a tenant's keys"
    );

    assert_refused(
        &cli,
        &["tenant", "delete", "acme"],
        EXIT_USAGE,
        "tenant `acme` still has 1 waiting and 0 running jobs",
    )?;
    assert_refused(&cli, &["tenant", "delete", "acme"], EXIT_USAGE, "`--force`")?;
    assert!(
        tenants(&cli)?.contains_key("acme"),
        "a refused delete kept the tenant"
    );
    assert_eq!(acme.count("queued")?, 1, "a refused delete kept the job");
    assert_eq!(token_owner(&cli, &token)?.as_deref(), Some("acme"));

    let deleted = cli.run(&["tenant", "delete", "acme", "--force"])?;
    assert!(deleted.contains("deleted tenant acme"), "{deleted}");
    assert!(!tenants(&cli)?.contains_key("acme"), "acme is still listed");
    assert_eq!(token_owner(&cli, &token)?, None, "acme's token still works");
    assert_refused(&acme, &["tasks"], EXIT_USAGE, "there is no tenant `acme`")?;
    assert_eq!(keys(&redis, "wr:{acme}*")?, Vec::<String>::new());
    assert_eq!(keys(&redis, "wr:{acme/*")?, Vec::<String>::new());

    let mut left = keys(&redis, "wr:{globex*")?;
    let mut before = globex_keys;
    left.sort();
    before.sort();
    assert_eq!(left, before, "deleting acme touched globex's keys");
    assert_eq!(globex.count("queued")?, 1);
    globex.assert_consistent()?;
    Ok(())
}

/// `cancel` stops a running guest at once: the job fails as `canceled`, the worker's slot is
/// free again long before the guest would have ended, and the worker keeps serving.
#[test]
fn cancel_stops_a_running_guest() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let cli = Cli::new(&redis);
    cli.upload("slow", "example-slow")?;
    cli.upload("hello", "example-hello")?;
    // One slot: the job after the canceled one can only run once the guest has stopped.
    let mut worker = Worker::start(&cli, "w", &["--concurrency", "1", "--lease", "30s"])?;
    // A first hello compiles the component, so the one after the cancel only has to run.
    let warm = cli.enqueue("hello", r#"{"name": "warm"}"#)?;
    wait_for(
        "the warm-up job to succeed",
        Duration::from_secs(30),
        || Ok((cli.job(&warm)?["state"] == "succeeded").then_some(())),
    )?;
    let id = cli.enqueue("slow", r#"{"ms": 20000}"#)?;
    wait_for("the job to run", Duration::from_secs(20), || {
        Ok((cli.job(&id)?["state"] == "running").then_some(()))
    })?;

    let canceled = cli.run(&["cancel", &id])?;
    assert!(
        canceled.contains(&format!("canceled job {id} (it was running)")),
        "{canceled}"
    );
    let next = cli.enqueue("hello", r#"{"name": "next"}"#)?;
    wait_for(
        "the worker to stop the guest",
        Duration::from_secs(5),
        || {
            Ok(worker
                .log()
                .contains("job canceled; guest stopped")
                .then_some(()))
        },
    )?;
    let after = wait_for("the next job to succeed", Duration::from_secs(15), || {
        let job = cli.job(&next)?;
        Ok((job["state"] == "succeeded").then_some(job))
    })?;

    let job = cli.job(&id)?;
    assert_eq!(job["state"], "failed", "{job:#}");
    assert_eq!(job["outcome"]["class"], "canceled", "{job:#}");
    let records = attempts(&job);
    assert_eq!(
        records.len(),
        1,
        "the stopped attempt recorded nothing more: {job:#}"
    );
    assert_eq!(records[0]["outcome"]["class"], "canceled", "{job:#}");
    assert_eq!(records[0]["worker"], "w", "{job:#}");
    // The slot was free before the guest's 20 s were up, so the guest did not run them out.
    let started = job["started_at_ms"].as_u64().context("no start time")?;
    let next_ended = attempts(&after)
        .last()
        .and_then(|record| record["ended_at_ms"].as_u64())
        .context("the next job has no end time")?;
    assert!(
        next_ended < started + 20_000,
        "the next job ended {} ms after the canceled one started: {after:#}",
        next_ended - started
    );
    assert_eq!(cli.count("running")?, 0);
    assert_eq!(cli.ids("running")?, BTreeSet::new());
    assert_eq!(cli.ids("failed")?, BTreeSet::from([id.clone()]));

    assert_refused(&cli, &["cancel", &id], EXIT_USAGE, "already failed")?;
    assert!(worker.is_alive()?, "the worker exited");
    worker.signal("-TERM")?;
    let status = worker.wait_exit(Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(0), "{status}");
    cli.assert_consistent()?;
    Ok(())
}
