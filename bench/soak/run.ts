/**
 * The soak (issue #18): mixed load through every door of two replicas while keys rotate, policies change and
 * the IdP, the introspection endpoint, the app, Redis and a replica fail, each several times; every answer
 * judged by the oracle (oracle.ts), and the replicas' RSS, heap, event-loop delay and open file descriptors
 * sampled every second. `runSoak` returns the figures; bench/soak.mjs prints and writes them, and the short
 * run in test/integration/soak.test.ts asserts on them.
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { ScriptedBrowser, signInAtProvider } from '../../test/support/scripted-browser.js';
import { USERS } from '../../test/support/signin-env.js';
import { Doors } from './doors.js';
import { DOORS, Timeline, type Credential, type Door, type Probe, type Session, type Verdict } from './oracle.js';
import { BROKEN_POLICY, POLICY_VERSIONS, type PolicyVersion } from './policy.js';
import { ODD, pick, ROUTES, SESSION_ROUTES, SPOOF, Tokens, type Minted, type OpaqueToken, type Planned } from './traffic.js';
import { COOKIE, M2M_CLIENTS, OPAQUE_AUDIENCE, PREFIX, startWorld, type Replica } from './world.js';

export interface SoakOptions {
  readonly seconds: number;
  /** requests per second across all doors (default 300) */
  readonly rate?: number;
  /** progress lines (default: none) */
  readonly log?: (line: string) => void;
}

export interface Sample {
  readonly t: number;
  readonly replica: string;
  readonly start: number;
  readonly rssMiB: number;
  readonly heapMiB: number;
  /** p99 and max of the event-loop delay over the second before (prom-client's histogram, reset at each scrape) */
  readonly loopP99Ms: number;
  readonly loopMaxMs: number;
  /** how long GET /healthz took */
  readonly healthzMs: number;
  readonly fds: number;
}

export interface WrongAnswer {
  readonly verdict: Verdict;
  readonly kind: string;
  readonly door: Door;
  readonly replica: string;
  readonly method: string;
  readonly path: string;
  readonly status: number | string;
  readonly inFault: boolean;
  readonly at: number;
}

export interface SoakResult {
  readonly seconds: number;
  readonly requests: number;
  /** door -> answer (HTTP status, or the failure's kind) -> count */
  readonly byDoor: Record<string, Record<string, number>>;
  readonly byKind: Record<string, number>;
  readonly verdicts: Record<Verdict, number>;
  readonly wrongAllows: number;
  readonly wrongDenialsOutsideFaults: number;
  readonly wrongDenialsInFaults: number;
  /** denials with the wrong status (a 403 where only 401 was right, a 401 for a bad path ...) */
  readonly wrongStatuses: number;
  /** failures by kind: 500, reset, refused, no answer, other, 503 outside a window ... */
  readonly failures: Record<string, number>;
  readonly failuresOutsideFaults: number;
  readonly wrong: readonly WrongAnswer[];
  /** fault -> how many times it ran */
  readonly faults: Record<string, number>;
  readonly findings: readonly string[];
  readonly samples: readonly Sample[];
  /**
   * Open file descriptors per replica when idle: after start (or its last restart) before any load, and after
   * the load stopped and the clients closed their connections (plus the keep-alive timeouts).
   */
  readonly idleFds: Record<string, { readonly before: number; readonly after: number }>;
  /** session refreshes by result (success, failure: the provider unreachable, ended) */
  readonly refreshes: Record<string, number>;
  /** the replicas' error log lines by message */
  readonly errorLogs: Record<string, number>;
  /** the faults and key changes, when they began */
  readonly events: ReadonlyArray<{ readonly at: number; readonly name: string }>;
  /** Date.now() when the load began */
  readonly started: number;
  /** requests with a withdrawn key that the replica had certainly dropped (401 right, or 503 in an IdP outage), and how many got that */
  readonly withdrawnJudgedStrictly: number;
  readonly withdrawnRefused: number;
  /** withdrawnJudgedStrictly per replica (A never restarts: its are tokens it had cached) */
  readonly withdrawnStrictBy: Record<string, number>;
  /** requests refused by a replica just taken out of rotation, sent again to another one (as a load balancer does) */
  readonly refusedRetried: number;
  /** log lines the replicas dropped (their stdout reader, the soak, fell behind) */
  readonly logLinesDropped: number;
  /** requests the load generator did not send because too many were in flight */
  readonly shed: number;
}

/** A key removal must be followed by a fetch of every replica within the cooldown, the longest backoff and some slack. */
const LATE_FETCH_MS = 70_000;

async function openFds(replica: Replica): Promise<number> {
  const pid = replica.process.child.pid;
  return pid === undefined ? Number.NaN : (await readdir(`/proc/${pid}/fd`)).length;
}

/* ---- the run -------------------------------------------------------------------------------------------- */

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function runSoak(options: SoakOptions): Promise<SoakResult> {
  const seconds = options.seconds;
  const rate = options.rate ?? 300;
  const log = options.log ?? ((): void => undefined);
  const dir = await mkdtemp(join(tmpdir(), 'authz-soak-'));
  // Stopped early (Ctrl-C): the folder with its secrets goes too.
  const removeDir = (): void => rmSync(dir, { recursive: true, force: true });
  process.once('exit', removeDir);
  const timeline = new Timeline();
  const findings: string[] = [];
  const reloadFailures = new Map<string, number>();
  const errorLogs: Record<string, number> = {};

  const world = await startWorld({
    dir,
    timeline,
    onLog: (replica, line) => {
      try {
        onLog(replica, line);
      } catch (err) {
        findings.push(`reading a log line of replica ${replica.name}: ${(err as Error).message}`);
      }
    },
  });
  function onLog(replica: Replica, line: Record<string, unknown>): void {
    // When the replica wrote the line (pino's time), not when the soak read it.
    if (line['msg'] === 'policy reloaded') timeline.policyLoaded(replica.name, typeof line['time'] === 'number' ? line['time'] : Date.now());
    if (line['msg'] === 'policy reload failed; the last good policy keeps serving') reloadFailures.set(replica.name, (reloadFailures.get(replica.name) ?? 0) + 1);
    if (typeof line['level'] === 'number' && line['level'] >= 50) {
      const msg = String(line['msg']);
      errorLogs[msg] = (errorLogs[msg] ?? 0) + 1;
    }
  }
  const doors = new Doors();
  let finished = false;
  try {
    const tokens = new Tokens(world);
    await tokens.refill();

    /* opaque tokens from the IdP's client_credentials grant */
    let opaque: OpaqueToken[] = [];
    const refillOpaque = async (): Promise<void> => {
      const fresh: OpaqueToken[] = [];
      for (const c of M2M_CLIENTS) {
        for (let i = 0; i < 6; i++) fresh.push({ token: await world.api.getToken(c.clientId, { audience: OPAQUE_AUDIENCE }), subject: c.clientId, roles: c.roles, expiresAt: Date.now() + 900_000 });
      }
      opaque = [...opaque.filter((o) => o.expiresAt - Date.now() > 300_000), ...fresh];
    };
    await refillOpaque();

    /* browser sessions through the sign-in provider's login page, over replica A */
    const sessions: Session[] = [];
    const ended: Session[] = [];
    const signIn = async (login: 'alice' | 'rita'): Promise<void> => {
      const browser = new ScriptedBrowser();
      try {
        const first = await browser.get(`${world.callbackOrigin}/orders`);
        await signInAtProvider(browser, first, { login });
        const cookie = browser.cookies.headerFor(`${world.callbackOrigin}/`);
        if (!cookie.includes(`${COOKIE}=`)) throw new Error(`no session cookie after signing in as ${login}`);
        const user = USERS[login] ?? {};
        sessions.push({ cookie, subject: user.sub ?? login, roles: user.roles ?? [], createdAt: Date.now(), endingAt: Infinity, endedAt: Infinity });
      } finally {
        await browser.close();
      }
    };
    for (const login of ['alice', 'rita', 'alice', 'rita'] as const) await signIn(login);
    const idleBefore = new Map<string, number>();
    for (const r of world.replicas) idleBefore.set(r.name, await openFds(r));

    /* the plan of one request */
    const plan = async (): Promise<Planned> => {
      const r = Math.random();
      const route = pick(ROUTES);
      const bearer = (m: Minted): Record<string, string> => ({ authorization: `Bearer ${m.token}` });
      const jwt = (m: Minted, valid: boolean): Credential => ({ kind: 'jwt', kid: m.kid, subject: m.subject, roles: m.roles, valid });
      if (r < 0.28) {
        const m = pick(tokens.valid);
        return { kind: 'valid token', target: route, credential: jwt(m, true), headers: bearer(m) };
      }
      if (r < 0.42) {
        const m = await tokens.churn();
        return { kind: 'churned token', target: route, credential: jwt(m, true), headers: bearer(m) };
      }
      if (r < 0.46 && tokens.withdrawn.length > 0) {
        const m = pick(tokens.withdrawn);
        return { kind: 'withdrawn key', target: route, credential: jwt(m, true), headers: bearer(m) };
      }
      if (r < 0.5) {
        const m = pick(tokens.expired);
        return { kind: 'expired token', target: route, credential: jwt(m, false), headers: bearer(m) };
      }
      if (r < 0.54) {
        const m = pick(tokens.wrongAudience);
        return { kind: 'wrong audience', target: route, credential: jwt(m, false), headers: bearer(m) };
      }
      if (r < 0.56) {
        const m = tokens.forged();
        return { kind: 'unknown key', target: route, credential: jwt(m, false), headers: bearer(m) };
      }
      if (r < 0.63) return { kind: 'no token', target: route, credential: { kind: 'none' }, headers: {} };
      if (r < 0.69) {
        const m = pick(tokens.valid);
        return { kind: 'spoofed headers', target: route, credential: jwt(m, true), headers: { ...SPOOF, ...bearer(m) }, spoofed: true };
      }
      if (r < 0.71) return { kind: 'spoofed, no token', target: route, credential: { kind: 'none' }, headers: SPOOF, spoofed: true };
      if (r < 0.77) {
        const m = pick(tokens.valid);
        return { kind: 'odd path', target: pick(ODD), credential: jwt(m, true), headers: bearer(m) };
      }
      if (r < 0.86) {
        const o = pick(opaque);
        return { kind: 'opaque token', target: route, credential: { kind: 'opaque', subject: o.subject, roles: o.roles, active: o.expiresAt - Date.now() > 60_000 }, headers: { authorization: `Bearer ${o.token}` } };
      }
      if (r < 0.88) {
        return { kind: 'unknown opaque', target: route, credential: { kind: 'opaque', subject: '', roles: [], active: false }, headers: { authorization: `Bearer opaque-${randomBytes(12).toString('hex')}` } };
      }
      const useEnded = ended.length > 0 && Math.random() < 0.2;
      const s = useEnded ? pick(ended) : pick(sessions.length > 0 ? sessions : ended);
      if (s === undefined) return { kind: 'no token', target: route, credential: { kind: 'none' }, headers: {} };
      return { kind: useEnded ? 'ended session' : 'session cookie', target: pick(SESSION_ROUTES), credential: { kind: 'session', session: s }, headers: { cookie: s.cookie } };
    };

    /* results */
    const byDoor: Record<string, Record<string, number>> = Object.fromEntries(DOORS.map((d) => [d, {}]));
    const byKind: Record<string, number> = {};
    const verdicts = { right: 0, permitted: 0, 'wrong allow': 0, 'wrong identity': 0, 'wrong path': 0, 'wrong denial': 0, 'wrong status': 0, failure: 0 } as Record<Verdict, number>;
    const failures: Record<string, number> = {};
    const wrong: WrongAnswer[] = [];
    let failuresOutsideFaults = 0;
    let wrongDenialsOutsideFaults = 0;
    let wrongDenialsInFaults = 0;
    let wrongStatuses = 0;
    let withdrawnJudgedStrictly = 0;
    let withdrawnRefused = 0;
  const withdrawnStrictBy: Record<string, number> = {};
    let requests = 0;
    let inflight = 0;
    let shed = 0;
    let rr = 0;
    let refusedRetried = 0;

    const fire = async (): Promise<void> => {
      const door = pick<Door>(['proxy', 'proxy', 'http', 'grpc', 'forward']);
      inflight++;
      try {
        const p = await plan();
        // The load balancer picks the replica as the request goes out (planning may wait for a token to be
        // signed, and meanwhile a replica may have been taken out of rotation).
        const choose = (): Replica | undefined => {
          const candidates = world.replicas.filter((r) => r.inRotation);
          return candidates[rr++ % candidates.length];
        };
        let replica = choose();
        if (replica === undefined) return;
        let t0 = Date.now();
        let answer = await doors.send(door, replica, p);
        if (answer.kind === 'failure' && answer.failure === 'refused' && !replica.inRotation) {
          // The replica was taken out of rotation while this request waited for a connection to it: it never
          // reached the sidecar, and a load balancer tries another endpoint (Envoy's and Istio's default
          // retry_on includes connect-failure). A refusal from a replica in rotation stays a failure.
          refusedRetried++;
          const other = choose();
          if (other === undefined) return;
          replica = other;
          t0 = Date.now();
          answer = await doors.send(door, replica, p);
        }
        const t1 = Date.now();
        const probe: Probe = { door, replica: replica.name, method: p.target.method, canonical: door !== 'proxy' && p.target.needsNormalizing ? undefined : p.target.canonical, credential: p.credential, spoofed: p.spoofed === true ? Object.keys(SPOOF) : [], bearer: p.headers['authorization'] !== undefined };
        requests++;
        byKind[p.kind] = (byKind[p.kind] ?? 0) + 1;
        const label = answer.kind === 'answer' ? String(answer.status) : answer.failure;
        const row = byDoor[door] as Record<string, number>;
        row[label] = (row[label] ?? 0) + 1;
        const verdict = timeline.judge(probe, answer, t0, t1);
        verdicts[verdict]++;
        if (p.kind === 'withdrawn key' && timeline.expect(probe, t0, t1).strictWithdrawn) {
          withdrawnJudgedStrictly++;
          withdrawnStrictBy[replica.name] = (withdrawnStrictBy[replica.name] ?? 0) + 1;
          // 401, or 503 while the IdP cannot say whether the kid is a new key (permitted)
          if (verdict === 'right' || verdict === 'permitted') withdrawnRefused++;
        }
        const inFault = timeline.inFault(t0, t1);
        if (verdict === 'failure') {
          const kind = answer.kind === 'failure' ? answer.failure : String(answer.status);
          failures[kind] = (failures[kind] ?? 0) + 1;
          if (!inFault) failuresOutsideFaults++;
        }
        if (verdict === 'wrong status' && answer.kind === 'answer' && answer.status < 500) wrongStatuses++;
        if (verdict === 'wrong status' && answer.kind === 'answer' && answer.status >= 500) {
          // a 5xx outside its permitted window is a failure of its own kind
          const kind = `${answer.status} outside its window`;
          failures[kind] = (failures[kind] ?? 0) + 1;
          if (!inFault) failuresOutsideFaults++;
        }
        if (verdict === 'wrong denial') {
          if (inFault) wrongDenialsInFaults++;
          else wrongDenialsOutsideFaults++;
        }
        if (verdict !== 'right' && verdict !== 'permitted' && wrong.length < 200) {
          wrong.push({
            verdict,
            kind: p.kind,
            door,
            replica: replica.name,
            method: p.target.method,
            path: p.target.raw,
            status: answer.kind === 'answer' ? answer.status : `${answer.failure}: ${answer.detail}`,
            inFault,
            at: t0,
          });
        }
      } finally {
        inflight--;
      }
    };

    /* sampling */
    const samples: Sample[] = [];
    const sampleOnce = async (): Promise<void> => {
      for (const r of world.replicas) {
        const pid = r.process.child.pid;
        if (pid === undefined || r.process.child.exitCode !== null) continue;
        try {
          const status = await readFile(`/proc/${pid}/status`, 'utf8');
          const rss = Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0) / 1024;
          const fds = (await readdir(`/proc/${pid}/fd`)).length;
          // What a kubelet's liveness probe sees.
          const probeStart = performance.now();
          const health = await request(`http://127.0.0.1:${r.ports.admin}/healthz`, { headersTimeout: 5_000, bodyTimeout: 5_000 });
          await health.body.dump();
          const healthzMs = performance.now() - probeStart;
          const res = await request(`http://127.0.0.1:${r.ports.admin}/metrics`, { headersTimeout: 2_000, bodyTimeout: 2_000 });
          const text = await res.body.text();
          const metric = (name: string): number => Number(new RegExp(`^${name} ([0-9.e+-]+)`, 'm').exec(text)?.[1] ?? NaN);
          samples.push({
            t: Date.now(),
            replica: r.name,
            start: r.starts,
            rssMiB: rss,
            heapMiB: metric('nodejs_heap_size_used_bytes') / 1048576,
            loopP99Ms: metric('nodejs_eventloop_lag_p99_seconds') * 1000,
            loopMaxMs: metric('nodejs_eventloop_lag_max_seconds') * 1000,
            healthzMs,
            fds,
          });
        } catch (err) {
          // A replica that is restarting has no /healthz; one in rotation must answer.
          if (r.inRotation) findings.push(`sampling replica ${r.name}: ${(err as Error).message.slice(0, 200)}`);
        }
      }
    };

    /* faults */
    const faults: Record<string, number> = {};
    const events: Array<{ at: number; name: string }> = [];
    const count = (name: string): void => void (faults[name] = (faults[name] ?? 0) + 1);
    let policyIndex = 0;
    let closing = false;
    const writePolicy = async (csv: string, version: PolicyVersion | undefined): Promise<void> => {
      const at = Date.now();
      await world.policy.write(csv);
      if (version !== undefined) for (const r of world.replicas) timeline.policyWritten(r.name, version, at);
    };
    const idpOutage = async (ms: number): Promise<void> => {
      const w = timeline.open('idp');
      await Promise.all([world.api.stop(), world.op.stop()]);
      await sleep(ms);
      await Promise.all([world.api.start(), world.op.start()]);
      w.end = Date.now();
      count('IdP down and up');
    };
    const introspectionOutage = async (ms: number): Promise<void> => {
      // The IdP answers everything but introspection: a broken endpoint behind a healthy JWKS.
      const w = timeline.open('introspection');
      world.api.introspectionDown = true;
      await sleep(ms);
      world.api.introspectionDown = false;
      w.end = Date.now();
      count('introspection down');
    };
    const appOutage = async (ms: number): Promise<void> => {
      const w = timeline.open('app');
      await world.killApp();
      await sleep(ms);
      await world.startApp();
      w.end = Date.now();
      count('app killed and restarted');
    };
    const redisRestart = async (ms: number): Promise<void> => {
      const w = timeline.open('redis');
      await world.redis.stop();
      // Its sessions are gone with it (no persistence, as deploy/kubernetes/redis-sessions runs it).
      const at = Date.now();
      for (const s of sessions.splice(0)) {
        s.endingAt = at;
        s.endedAt = at;
        ended.push(s);
      }
      await sleep(ms);
      await world.redis.start();
      w.end = Date.now();
      count('Redis restarted');
      await sleep(3_000);
      await signInAgain();
    };
    const signInAgain = async (): Promise<void> => {
      for (const login of ['alice', 'rita'] as const) {
        try {
          await signIn(login);
        } catch (err) {
          findings.push(`sign-in as ${login} failed: ${(err as Error).message.slice(0, 200)}`);
        }
      }
    };
    const signOutOne = async (): Promise<void> => {
      const s = sessions.shift();
      if (s === undefined) return;
      s.endingAt = Date.now();
      const res = await request(`${world.callbackOrigin}${PREFIX}/sign-out`, { headers: { cookie: s.cookie } });
      await res.body.dump();
      if (res.statusCode !== 302) {
        findings.push(`sign-out answered ${res.statusCode}`);
        s.endingAt = Infinity;
        sessions.push(s);
        return;
      }
      s.endedAt = Date.now();
      ended.push(s);
      count('sign-out');
      await signInAgain();
    };
    const restartReplica = async (): Promise<void> => {
      const replica = world.replicas[1] as Replica;
      // The load balancer takes it out first (Kubernetes removes the endpoint); requests in flight must finish.
      replica.inRotation = false;
      const { exitCode } = await world.restartReplica(replica);
      if (exitCode !== 0) findings.push(`replica ${replica.name} exited ${exitCode} after SIGTERM`);
      doors.reset(replica);
      idleBefore.set(replica.name, await openFds(replica));
      // It loads the current policy at start.
      timeline.policyWritten(replica.name, POLICY_VERSIONS[policyIndex % POLICY_VERSIONS.length] as PolicyVersion, Date.now(), Date.now());
      replica.inRotation = true;
      count('replica restarted (SIGTERM, drain, start)');
    };
    const rotateKeys = async (published = false): Promise<void> => {
      // Planned rotation: publish the new key, sign with it only after the refetch cooldown (as IdPs publish ahead),
      // then withdraw the old one. Its tokens stay in clients' hands: they must stop working. The first
      // rotation's key was published before the replicas started (`published`).
      const old = tokens.signingKid;
      if (!published) {
        await world.api.rotateKeys();
        timeline.keyPublished(world.api.currentKid);
        events.push({ at: Date.now(), name: 'new key published' });
        await sleep(35_000);
        if (closing) return;
      }
      const kid = world.api.currentKid;
      const oldTokens = tokens.valid;
      tokens.signingKid = kid;
      events.push({ at: Date.now(), name: 'new key in use' });
      await tokens.refill();
      await sleep(3_000);
      if (closing) return;
      await world.api.removeKey(old);
      timeline.keyRemoved(old);
      events.push({ at: Date.now(), name: 'old key removed' });
      tokens.withdrawn = [...tokens.withdrawn.filter((m) => world.api.publishedKids.includes(m.kid) === false).slice(-40), ...oldTokens];
      count('JWKS rotation (new key, old key removed)');
    };

    const swapPolicy = async (): Promise<void> => {
      policyIndex++;
      const v = POLICY_VERSIONS[policyIndex % POLICY_VERSIONS.length] as PolicyVersion;
      await writePolicy(v.csv, v);
      count('policy replaced (..data swap)');
    };
    // In this order, the IdP is down when the second rotation's new key comes into use (at about 42 s): the
    // short run meets the key faults too.
    const steps: Array<[string, () => Promise<void>]> = [
      ['policy swap', swapPolicy],
      ['introspection down', () => introspectionOutage(8_000)],
      ['SIGHUP', async () => {
        for (const r of world.replicas) if (r.inRotation) r.process.signal('SIGHUP');
        count('SIGHUP');
      }],
      ['app kill', () => appOutage(3_000)],
      ['broken policy', async () => {
        await writePolicy(BROKEN_POLICY, undefined);
        count('broken policy written');
      }],
      ['Redis restart', () => redisRestart(3_000)],
      ['IdP down', () => idpOutage(8_000)],
      ['policy swap', swapPolicy],
      ['replica restart', restartReplica],
      ['sign-out', signOutOne],
    ];

    const started = Date.now();
    const deadline = started + seconds * 1000;
    const gapMs = seconds <= 120 ? 4_500 : 15_000;
    log(`soak: ${seconds} s, ${rate} req/s, a fault every ${gapMs / 1000} s`);

    const loadLoop = (async () => {
      const tickMs = 20;
      let credit = 0;
      const pending = new Set<Promise<void>>();
      while (Date.now() < deadline) {
        credit += (rate * tickMs) / 1000;
        while (credit >= 1) {
          credit--;
          if (inflight >= 400) {
            shed++;
            continue;
          }
          const p = fire().catch((err: unknown) => void findings.push(`load error: ${(err as Error).message}`));
          pending.add(p);
          void p.finally(() => pending.delete(p));
        }
        await sleep(tickMs);
      }
      await Promise.all(pending);
    })();

    const sampler = (async () => {
      while (Date.now() < deadline) {
        await sampleOnce();
        await sleep(1_000);
      }
      await sampleOnce();
    })();

    const rotations = (async () => {
      // The first new key was published before the replicas started (they hold it): it comes into use after
      // 2 s, and the old key is withdrawn 3 s later, while both replicas still hold it and have tokens signed
      // with it cached. They see it gone at their next fetch (within the 30 s cooldown: unknown kids keep
      // coming), which even the 60 s run reaches.
      await sleep(2_000);
      await rotateKeys(true);
      while (Date.now() + 45_000 < deadline && !closing) await rotateKeys();
    })();

    const opaqueRefresh = (async () => {
      while (Date.now() + 120_000 < deadline) {
        await sleep(120_000);
        if (timeline.windows.some((w) => w.kind === 'idp' && w.end === Infinity)) continue;
        await refillOpaque().catch((err: unknown) => void findings.push(`opaque token refill failed: ${(err as Error).message}`));
      }
    })();

    const schedule = (async () => {
      await sleep(3_000);
      let i = 0;
      while (Date.now() + gapMs < deadline) {
        const [name, step] = steps[i++ % steps.length] as [string, () => Promise<void>];
        const at = Date.now();
        events.push({ at, name });
        log(`soak: +${Math.round((at - started) / 1000)} s ${name}`);
        await step().catch((err: unknown) => void findings.push(`fault ${name} failed: ${(err as Error).message}`));
        await sleep(Math.max(0, gapMs - (Date.now() - at)));
      }
    })();

    await Promise.all([loadLoop, sampler, schedule, opaqueRefresh]);
    closing = true;
    await rotations;
    const missed = timeline.missedReloads();
    if (missed > 0) findings.push(`${missed} policy writes never reported loaded by a replica`);
    findings.push(...timeline.lateFetches(world.replicas.map((r) => r.name), LATE_FETCH_MS));
    const brokenWrites = faults['broken policy written'] ?? 0;
    for (const r of world.replicas) {
      const seen = reloadFailures.get(r.name) ?? 0;
      if (brokenWrites > 0 && seen === 0) findings.push(`replica ${r.name} never reported refusing a broken policy`);
    }

    // Session refreshes by result, summed over the replicas (replica B's count restarts with it).
    const refreshes: Record<string, number> = {};
    let logLinesDropped = 0;
    for (const r of world.replicas) {
      try {
        const res = await request(`http://127.0.0.1:${r.ports.admin}/metrics`);
        const text = await res.body.text();
        for (const m of text.matchAll(/^authz_sidecar_session_refresh_total\{[^}]*result="([a-z]+)"[^}]*\} (\d+)/gm)) {
          refreshes[m[1] as string] = (refreshes[m[1] as string] ?? 0) + Number(m[2]);
        }
        // The error log lines counted above are all there only if none was dropped.
        logLinesDropped += Number(/^authz_sidecar_log_lines_dropped_total (\d+)/m.exec(text)?.[1] ?? NaN);
      } catch (err) {
        findings.push(`metrics of replica ${r.name}: ${(err as Error).message}`);
      }
    }
    await doors.close();
    // Idle keep-alive connections (ours, the sidecar's to the app, the IdPs and Redis) close within about 5 s
    // (the servers' default keep-alive timeout); wait up to 30 s for each replica to be back where it began.
    const idleFds: Record<string, { before: number; after: number }> = {};
    const settleBy = Date.now() + 30_000;
    for (;;) {
      for (const r of world.replicas) idleFds[r.name] = { before: idleBefore.get(r.name) ?? Number.NaN, after: await openFds(r) };
      if (Object.values(idleFds).every((f) => f.after <= f.before) || Date.now() > settleBy) break;
      await sleep(1_000);
    }
    await world.close();
    for (const [name, code] of world.finalExits()) if (code !== 0) findings.push(`replica ${name} ended with ${code} after its final SIGTERM`);
    await rm(dir, { recursive: true, force: true });
    process.off('exit', removeDir);

    finished = true;
    return {
      seconds: (Date.now() - started) / 1000,
      requests,
      byDoor,
      byKind,
      verdicts,
      wrongAllows: verdicts['wrong allow'] + verdicts['wrong identity'] + verdicts['wrong path'],
      wrongDenialsOutsideFaults,
      wrongDenialsInFaults,
      wrongStatuses,
      failures,
      failuresOutsideFaults,
      wrong,
      faults,
      findings,
      samples,
      idleFds,
      refreshes,
      errorLogs,
      events,
      started,
      withdrawnJudgedStrictly,
      withdrawnRefused,
      withdrawnStrictBy,
      logLinesDropped,
      refusedRetried,
      shed,
    };
  } finally {
    // A failure before the end (a sign-in, a token request): nothing it started stays behind.
    if (!finished) {
      await doors.close().catch(() => undefined);
      await world.close();
      removeDir();
      process.off('exit', removeDir);
    }
  }
}
