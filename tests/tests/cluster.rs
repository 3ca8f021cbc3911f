//! The queue on a Redis Cluster of three masters: queues whose keys live on different nodes
//! all drain, retries work, and no script touches keys of two slots.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use wasm_runner::queue::{DEFAULT_TENANT, EnqueueRequest, JobState, Queue, TaskDefaults};
use wasm_runner::runtime::{EngineOptions, Executor};
use wasm_runner::scheduler::{Backoff, RetryPolicy};
use wasm_runner::worker::{WorkerConfig, serve};
use wasm_runner_tests::{TestRedisCluster, guest_bytes};

async fn wait_for_succeeded(queue: &Queue, name: &str, count: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = queue.stats(name, Duration::from_secs(60)).await?;
        let done = stats
            .counts
            .iter()
            .find(|(s, _)| *s == JobState::Succeeded)
            .map(|c| c.1);
        if done == Some(count) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("queue {name} did not finish: {stats:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Jobs on three queues spread over three masters all succeed, including retried ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_on_a_cluster_drain_and_retry() -> anyhow::Result<()> {
    let cluster = TestRedisCluster::start()?;
    let queues = cluster.queues_on_every_node(DEFAULT_TENANT)?;
    let queue = Queue::open(&cluster.url(), "default").await?;
    let defaults = |policy| TaskDefaults {
        policy,
        timeout_ms: 10_000,
        memory_bytes: 64 << 20,
    };
    let retries = RetryPolicy::builder()
        .max_attempts(3)
        .backoff(Backoff::Intervals(vec![Duration::from_millis(100)]))
        .jitter_percent(0)
        .build()
        .map_err(anyhow::Error::msg)?;
    queue
        .upload(
            "hello",
            &guest_bytes("example-hello"),
            &defaults(RetryPolicy::default()),
        )
        .await?;
    queue
        .upload("flaky", &guest_bytes("example-flaky"), &defaults(retries))
        .await?;

    let executor = Arc::new(Executor::new(EngineOptions {
        max_concurrent: 4,
        ..EngineOptions::default()
    })?);
    let config = WorkerConfig {
        queues: Some(queues.clone()),
        concurrency: 4,
        lease: Duration::from_secs(5),
        worker_id: "cluster-worker".into(),
        ..WorkerConfig::new(cluster.url())
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(serve(config, executor, async {
        let _ = stopped.await;
    }));

    let mut flaky = Vec::new();
    for name in &queues {
        let hello: Vec<EnqueueRequest> = (0..30)
            .map(|n| EnqueueRequest::new("hello", format!(r#"{{"name": "n{n}"}}"#)))
            .collect();
        queue.enqueue_batch(name, &hello, 1 << 20).await?;
        let id = queue
            .enqueue(name, &EnqueueRequest::new("flaky", "{}"), 1 << 20)
            .await?
            .id;
        flaky.push((name.clone(), id));
    }
    for name in &queues {
        wait_for_succeeded(&queue, name, 31).await?;
    }
    for (name, id) in &flaky {
        let job = queue.job(name, id).await?.context("flaky job")?;
        assert_eq!(job.attempt, 3, "{job:?}");
        assert_eq!(job.attempts.len(), 3);
    }
    let failed = queue.jobs(&queues[0], JobState::Failed, None, 10).await?;
    assert!(failed.is_empty());

    let _ = stop.send(());
    worker.await.context("worker panicked")??;
    for name in &queues {
        let problems = queue.check_invariants(name).await?;
        assert!(
            problems.is_empty(),
            "queue {name} inconsistent: {problems:#?}"
        );
    }
    Ok(())
}
