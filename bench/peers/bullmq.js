// The benchmark's BullMQ worker and producer.
//
//   node bullmq.js work --concurrency N [--crash]
//   node bullmq.js produce KIND PAYLOADS OUT [--batch N] [--pace-ms MS]
//
// BENCH_REDIS_PORT is the queue's private Redis, BENCH_LEDGER_PORT the ledger Redis where tasks
// record their executions (see ledger.py for the record format, which this file shares). The
// producer writes {"seconds": ..., "jobs": [[id, µs before its add call, µs after], ...]} to OUT.
'use strict';

const fs = require('fs');
const { performance } = require('perf_hooks');
const IORedis = require('ioredis');
const { Queue, Worker, UnrecoverableError } = require('bullmq');

const QUEUE = 'bench';
const EXEC_KEY = 'bench:exec';
// W2 and W3: 1 s before the second attempt, 2 s before the third.
const RETRY_DELAYS_MS = [1000, 2000];

function connection() {
  // maxRetriesPerRequest: null is what BullMQ requires of a worker's connection.
  const port = Number(process.env.BENCH_REDIS_PORT);
  return { host: '127.0.0.1', port, maxRetriesPerRequest: null };
}

// Wall clock in µs since the epoch, finer than Date.now().
function nowUs() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

// Options for each kind of job: three attempts where the workload has retries.
function jobOptions(kind) {
  if (kind === 'flaky' || kind === 'validate') {
    return { attempts: 3, backoff: { type: 'custom' } };
  }
  if (kind === 'slow') {
    return { attempts: 3 };
  }
  return {};
}

function parseFlags(args) {
  const flags = {};
  const positional = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i].startsWith('--')) {
      const name = args[i].slice(2);
      const takesValue = i + 1 < args.length && !args[i + 1].startsWith('--');
      flags[name] = takesValue ? args[++i] : true;
    } else {
      positional.push(args[i]);
    }
  }
  return { flags, positional };
}

class TransientError extends Error {}

function makeProcessor(ledger) {
  const record = (...fields) => ledger.rpush(EXEC_KEY, fields.join(' '));

  // Runs body() between a start and an end record in the ledger.
  async function recorded(job, attempt, body) {
    await record('S', job.id, attempt, nowUs());
    try {
      await body();
    } catch (err) {
      const outcome = err instanceof UnrecoverableError ? 'permanent' : 'transient';
      await record('E', job.id, attempt, nowUs(), outcome);
      throw err;
    }
    await record('E', job.id, attempt, nowUs(), 'ok');
  }

  const bodies = {
    probe: () => {},
    flaky: (attempt) => {
      if (attempt < 3) {
        throw new TransientError(`attempt ${attempt} fails on purpose; attempt 3 will succeed`);
      }
    },
    validate: (attempt, data) => {
      const email = data && data.email;
      if (typeof email !== 'string' || !email.includes('@')) {
        // BullMQ's documented way to fail a job without using its remaining attempts.
        throw new UnrecoverableError('`email` is not a valid address');
      }
    },
    slow: (attempt, data) => new Promise((resolve) => setTimeout(resolve, Number(data))),
  };

  return async (job) => {
    if (job.name === 'noop') {
      return;
    }
    const attempt = job.attemptsMade + 1;
    const body = bodies[job.name];
    await recorded(job, attempt, () => body(attempt, job.data));
  };
}

async function work(flags) {
  const ledger = new IORedis({ host: '127.0.0.1', port: Number(process.env.BENCH_LEDGER_PORT) });
  const options = {
    connection: connection(),
    concurrency: Number(flags.concurrency || 1),
    settings: {
      backoffStrategy: (attemptsMade) =>
        RETRY_DELAYS_MS[Math.min(attemptsMade, RETRY_DELAYS_MS.length) - 1],
    },
  };
  if (flags.crash) {
    // W5: a killed worker's jobs are taken back after 5 s without a lock renewal.
    options.lockDuration = 5000;
    options.stalledInterval = 5000;
  }
  const worker = new Worker(QUEUE, makeProcessor(ledger), options);
  worker.on('error', (err) => console.error('worker error:', err.message));
  const stop = async () => {
    await worker.close();
    await ledger.quit();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

async function produce(positional, flags) {
  const [kind, payloadsPath, outPath] = positional;
  const payloads = fs
    .readFileSync(payloadsPath, 'utf8')
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line));
  const queue = new Queue(QUEUE, { connection: connection() });
  await queue.waitUntilReady();
  const opts = jobOptions(kind);
  const batch = Number(flags.batch || 1000);
  const paceMs = Number(flags['pace-ms'] || 0);

  const jobs = [];
  const began = performance.now();
  if (paceMs > 0) {
    for (let i = 0; i < payloads.length; i++) {
      const wait = began + i * paceMs - performance.now();
      if (wait > 0) {
        await new Promise((resolve) => setTimeout(resolve, wait));
      }
      const tUs = nowUs();
      const job = await queue.add(kind, payloads[i], opts);
      jobs.push([job.id, tUs, nowUs()]);
    }
  } else {
    for (let start = 0; start < payloads.length; start += batch) {
      const chunk = payloads.slice(start, start + batch);
      const tUs = nowUs();
      const added = await queue.addBulk(chunk.map((data) => ({ name: kind, data, opts })));
      const afterUs = nowUs();
      for (const job of added) {
        jobs.push([job.id, tUs, afterUs]);
      }
    }
  }
  const seconds = (performance.now() - began) / 1000;
  await queue.close();
  fs.writeFileSync(outPath, JSON.stringify({ seconds, jobs }));
}

async function main() {
  const [command, ...rest] = process.argv.slice(2);
  const { flags, positional } = parseFlags(rest);
  if (command === 'work') {
    await work(flags);
  } else if (command === 'produce') {
    await produce(positional, flags);
  } else {
    console.error('usage: node bullmq.js work|produce ...');
    process.exit(2);
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
