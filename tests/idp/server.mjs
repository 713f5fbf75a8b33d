// A real OpenID provider (oidc-provider 9) for authproxy's integration tests.
//
// Usage: node server.mjs CONFIG.json
//
// Everything is configured from the one JSON file named by argv[2], so the Python side
// (tests/support/idp.py) writes it and starts us; no environment variables are read.
// Keys (unknown keys are an error, so a misspelt option fails loudly):
//
//   port (required)          listen on 127.0.0.1:port
//   clients (required)       oidc-provider client metadata (snake_case, as in RFC 7591)
//   issuer                   default http://127.0.0.1:<port>
//   jwks                     private JWK set to sign with; the first key signs. Default: one new RSA key
//   access_token_ttl, id_token_ttl, refresh_token_ttl   seconds (3600, 3600, 14 days)
//   rotate_refresh_token     default true: every refresh grant spends the old refresh token
//   refresh_token_requires_offline_access   default false: a client allowed the refresh_token grant
//                            gets a refresh token whether or not offline_access was granted
//   extra_claims             merged into every account's claims and released in the ID token
//   groups_overage_source    when set, accounts have no groups claim but a distributed one (OIDC Core §5.6.2)
//                            naming this endpoint, as Entra ID does for users in more than 200 groups
//   jwt_access_token_audience  when set, access tokens are RFC 9068 JWTs (header typ "at+jwt") for this
//                            audience (resource indicators with a default resource), carrying the account's
//                            email, preferred_username and groups as Keycloak's and Azure AD's do. oidc-provider
//                            only accepts opaque tokens at userinfo, so tests using this leave use_userinfo off.
//   cookie_keys              keys signing the provider's cookies (fixed default: survives restarts)
//   state_file               where the token/session store is loaded from at start and saved to on
//                            SIGTERM/SIGINT, so a restart (e.g. with a new jwks) keeps sessions and grants
//   require_pushed_authorization_requests   default false: when true, the provider takes authorization
//                            requests only through its PAR endpoint (RFC 9126 §5) and says so in discovery
//   acr_by_password          opt-in step-up: {"<password>": "<acr>", ...}; a sign-in with that password at the
//                            login form gets that acr in its ID token (and in JWT access tokens, with auth_time);
//                            "*" names the acr of any other password (without it, other passwords get no acr).
//                            The values become acr_values_supported and every client's default_acr_values, and
//                            clients default to require_auth_time, so every ID token carries acr and auth_time.
//                            Unset (the default): no acr anywhere, auth_time only when max_age is asked.
//   events_file              each event line is also appended here, synchronously and before the HTTP
//                            response that caused it goes out, so a test that got the response can read
//                            the event at once (a reader of the stdout pipe may not have seen it yet)
//
// Contract with the tests: one JSON object per line on stdout, never a token value:
//   {"event":"ready","port":N,"issuer":"..."}
//   {"event":"grant","ok":true,"grant_type":"authorization_code"|"refresh_token","client_id":"...",
//    "sub":"...","refresh_token_rotated":bool}
//   {"event":"grant","ok":false,"grant_type":"...","client_id":"...","error":"invalid_grant",
//    "error_description":"..."}
//   {"event":"backchannel","ok":true|false,"client_id":"...","sub":"...","sid":"...","error":"..."}
//   {"event":"authorization","ok":true|false,"client_id":"...","error":"..."}
//   {"event":"end_session","client_id":"..."|null}
// oidc-provider's own notices and warnings go to stderr.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';

import Provider from 'oidc-provider';

const KNOWN_KEYS = new Set([
  'port', 'issuer', 'clients', 'jwks', 'access_token_ttl', 'id_token_ttl', 'refresh_token_ttl',
  'rotate_refresh_token', 'refresh_token_requires_offline_access', 'extra_claims', 'cookie_keys',
  'state_file', 'events_file', 'jwt_access_token_audience', 'require_pushed_authorization_requests',
  'acr_by_password', 'groups_overage_source',
]);

// Lifetimes we do not expose as options; set so oidc-provider does not warn about defaults.
const AUTHORIZATION_CODE_TTL = 60;
const INTERACTION_TTL = 60 * 60;
const SESSION_TTL = 14 * 24 * 60 * 60;
const GRANT_TTL = 14 * 24 * 60 * 60;
const DEFAULT_REFRESH_TOKEN_TTL = 14 * 24 * 60 * 60;

// The provider's cookies share the host 127.0.0.1 with the proxy under test (cookies ignore
// ports), so they get names the proxy will not use.
const COOKIE_NAMES = {
  session: 'op_session', interaction: 'op_interaction', resume: 'op_interaction_resume',
};

let eventsFile;

function emit(event) {
  const line = `${JSON.stringify(event)}\n`;
  if (eventsFile) fs.appendFileSync(eventsFile, line);
  process.stdout.write(line);
}

function loadConfig(path) {
  if (!path) {
    throw new Error('usage: node server.mjs CONFIG.json');
  }
  const config = JSON.parse(fs.readFileSync(path, 'utf8'));
  const problems = [];
  for (const key of Object.keys(config)) {
    if (!KNOWN_KEYS.has(key)) problems.push(`unknown key ${JSON.stringify(key)}`);
  }
  if (!Number.isInteger(config.port)) problems.push(`port must be an integer, got ${JSON.stringify(config.port)}`);
  if (!Array.isArray(config.clients)) problems.push('clients must be a list of client metadata');
  if (config.jwks !== undefined && !Array.isArray(config.jwks?.keys)) problems.push('jwks must be {"keys": [...]}');
  const acrs = config.acr_by_password;
  if (acrs !== undefined && (typeof acrs !== 'object' || acrs === null || Array.isArray(acrs)
      || !Object.values(acrs).every((acr) => typeof acr === 'string' && acr))) {
    problems.push('acr_by_password must be {"<password>": "<acr>", ...}');
  }
  if (problems.length) {
    throw new Error(`${path}: ${problems.join('; ')}`);
  }
  return config;
}

function generateRsaJwks() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { keys: [{ ...jwk, kid: crypto.randomUUID(), use: 'sig', alg: 'RS256' }] };
}

// The ID token algorithm clients get unless their metadata names one: the first key's.
function signingAlgFor(jwk) {
  if (jwk.alg) return jwk.alg;
  if (jwk.kty === 'RSA') return 'RS256';
  if (jwk.kty === 'EC') return { 'P-256': 'ES256', 'P-384': 'ES384', 'P-521': 'ES512' }[jwk.crv];
  if (jwk.kty === 'OKP') return 'EdDSA';
  return undefined;
}

// A plain in-memory store (the shape of oidc-provider's adapter interface) that can be saved to
// and loaded from a file, so a restarted provider still knows its sessions, grants and tokens.
class Store {
  constructor() {
    this.entries = new Map(); // key -> { payload, expiresAt (ms) | null }
  }

  get(key) {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt !== null && entry.expiresAt <= Date.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return entry.payload;
  }

  set(key, payload, expiresIn) {
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : null;
    this.entries.set(key, { payload, expiresAt });
  }

  delete(key) {
    this.entries.delete(key);
  }

  // The keys of a grant's tokens, for revokeByGrantId; kept as long as its longest-lived token.
  addToGrant(grantId, memberKey, expiresIn) {
    const key = `grant:${grantId}`;
    const members = this.get(key) ?? [];
    const previous = this.entries.get(key)?.expiresAt;
    this.set(key, [...members, memberKey], expiresIn);
    const entry = this.entries.get(key);
    if (previous === null || entry.expiresAt === null) entry.expiresAt = null;
    else if (previous !== undefined) entry.expiresAt = Math.max(previous, entry.expiresAt);
  }

  load(path) {
    if (!path || !fs.existsSync(path)) return;
    for (const [key, entry] of JSON.parse(fs.readFileSync(path, 'utf8'))) {
      this.entries.set(key, entry);
    }
  }

  save(path) {
    if (!path) return;
    fs.writeFileSync(path, JSON.stringify([...this.entries]));
  }
}

function adapterFor(store) {
  return class StoreAdapter {
    constructor(model) {
      this.model = model;
    }

    key(id) {
      return `${this.model}:${id}`;
    }

    async upsert(id, payload, expiresIn) {
      store.set(this.key(id), payload, expiresIn);
      if (this.model === 'Session') store.set(`sessionUid:${payload.uid}`, id, expiresIn);
      if (payload.userCode) store.set(`userCode:${payload.userCode}`, id, expiresIn);
      if (payload.grantId) store.addToGrant(payload.grantId, this.key(id), expiresIn);
    }

    async find(id) {
      return store.get(this.key(id));
    }

    async findByUid(uid) {
      const id = store.get(`sessionUid:${uid}`);
      return id === undefined ? undefined : this.find(id);
    }

    async findByUserCode(userCode) {
      const id = store.get(`userCode:${userCode}`);
      return id === undefined ? undefined : this.find(id);
    }

    async consume(id) {
      const payload = store.get(this.key(id));
      if (payload) payload.consumed = Math.floor(Date.now() / 1000);
    }

    async destroy(id) {
      store.delete(this.key(id));
    }

    async revokeByGrantId(grantId) {
      for (const key of store.get(`grant:${grantId}`) ?? []) store.delete(key);
      store.delete(`grant:${grantId}`);
    }
  };
}

function claimsFor(sub, extraClaims, overageSource) {
  const claims = {
    sub,
    email: `${sub}@example.test`,
    email_verified: true,
    preferred_username: sub,
    name: sub,
    groups: ['staff', `${sub}-group`],
    ...extraClaims,
  };
  if (overageSource) {
    delete claims.groups;
    claims._claim_names = { groups: 'src1' };
    claims._claim_sources = { src1: { endpoint: overageSource } };
  }
  return claims;
}

// RFC 9068 access tokens for one audience, or oidc-provider's default opaque tokens (see jwt_access_token_audience).
function jwtAccessTokens(audience) {
  if (!audience) return { enabled: false };
  return {
    enabled: true,
    defaultResource: async () => audience,
    useGrantedResource: async () => true,
    getResourceServerInfo: async () => ({ scope: 'api', audience, accessTokenFormat: 'jwt' }),
  };
}

function buildProvider(config, store) {
  const issuer = config.issuer ?? `http://127.0.0.1:${config.port}`;
  const jwks = config.jwks ?? generateRsaJwks();
  const extraClaims = config.extra_claims ?? {};
  const rotate = config.rotate_refresh_token ?? true;
  const requireOffline = config.refresh_token_requires_offline_access ?? false;

  return new Provider(issuer, {
    adapter: adapterFor(store),
    clients: config.clients,
    clientDefaults: {
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: signingAlgFor(jwks.keys[0]),
      // acr_by_password: every ID token says how the user signed in and when, as Keycloak's and Entra's do
      // (oidc-provider releases acr and auth_time only when asked for; these ask on every client's behalf).
      ...(config.acr_by_password ? {
        default_acr_values: [...new Set(Object.values(config.acr_by_password))], require_auth_time: true,
      } : {}),
    },
    jwks,
    cookies: { names: COOKIE_NAMES, keys: config.cookie_keys ?? ['authproxy-test-idp-cookie-key'] },
    // Claims of the requested scopes go in the ID token itself, not only at userinfo
    // (OIDC Core §5.4 says userinfo; the proxy reads the ID token).
    conformIdTokenClaims: false,
    claims: {
      openid: ['sub', ...Object.keys(extraClaims)],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username', 'groups'],
      groups: ['groups'],
      acr: null,
      sid: null,
      auth_time: null,
      iss: null,
    },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    async findAccount(ctx, sub) {
      return { accountId: sub, async claims() { return claimsFor(sub, extraClaims, config.groups_overage_source); } };
    },
    features: {
      devInteractions: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      backchannelLogout: { enabled: true },
      claimsParameter: { enabled: true },
      resourceIndicators: jwtAccessTokens(config.jwt_access_token_audience),
      pushedAuthorizationRequests: {
        enabled: true,
        requirePushedAuthorizationRequests: config.require_pushed_authorization_requests ?? false,
      },
    },
    ...(config.acr_by_password ? { acrValues: [...new Set(Object.values(config.acr_by_password))] } : {}),
    async extraTokenClaims(ctx, token) {
      if (!config.jwt_access_token_audience || !token.accountId) return undefined;
      const { email, preferred_username: username, groups } = claimsFor(token.accountId, extraClaims);
      return { email, preferred_username: username, groups, ...signInOf(ctx, config) };
    },
    pkce: { required: () => true },
    // oidc-provider's outgoing requests (backchannel logout) refuse special-use addresses such as
    // 127.0.0.0/8 to stop SSRF; every relying party in these tests is on loopback, so drop that guard.
    fetch(url, options) {
      const { dispatcher, ...rest } = options;
      return globalThis.fetch(url, rest);
    },
    async issueRefreshToken(ctx, client, source) {
      return client.grantTypeAllowed('refresh_token')
        && (!requireOffline || source.scopes.has('offline_access'));
    },
    rotateRefreshToken: rotate,
    ttl: {
      AccessToken: config.access_token_ttl ?? 3600,
      IdToken: config.id_token_ttl ?? 3600,
      RefreshToken: config.refresh_token_ttl ?? DEFAULT_REFRESH_TOKEN_TTL,
      AuthorizationCode: AUTHORIZATION_CODE_TTL,
      Interaction: INTERACTION_TTL,
      Session: SESSION_TTL,
      Grant: GRANT_TTL,
    },
  });
}

// acr_by_password: how the grant's sign-in went (RFC 9068 §2.2.1 acr and auth_time), from the code or
// refresh token being spent; nothing without the option, so default tokens are as they always were.
function signInOf(ctx, config) {
  if (!config.acr_by_password) return {};
  const source = ctx.oidc.entities.AuthorizationCode ?? ctx.oidc.entities.RefreshToken;
  if (!source) return {};
  return {
    ...(source.acr ? { acr: source.acr } : {}),
    ...(source.authTime ? { auth_time: source.authTime } : {}),
  };
}

// acr_by_password: the login form's answer, taken before devInteractions' own (which records no acr), so the
// acr follows the password typed. Only a POST of the login prompt; everything else goes on as usual.
function acrByPassword(provider, acrs) {
  return async (ctx, next) => {
    if (ctx.method !== 'POST' || !/^\/interaction\/[^/]+$/.test(ctx.path)) return next();
    const chunks = [];
    for await (const chunk of ctx.req) chunks.push(chunk);
    const body = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
    if (body.get('prompt') !== 'login') {
      ctx.request.body = Object.fromEntries(body);    // consent: read by devInteractions from here
      return next();
    }
    const acr = acrs[body.get('password') ?? ''] ?? acrs['*'];
    ctx.respond = false;
    await provider.interactionFinished(ctx.req, ctx.res, {
      login: { accountId: body.get('login'), ...(acr ? { acr } : {}) },
    }, { mergeWithLastSubmission: false });
    return undefined;
  };
}

function grantType(ctx) {
  return ctx.oidc?.params?.grant_type ?? ctx.oidc?.body?.grant_type ?? null;
}

function subscribe(provider) {
  provider.on('grant.success', (ctx) => emit({
    event: 'grant',
    ok: true,
    grant_type: grantType(ctx),
    client_id: ctx.oidc.client?.clientId ?? null,
    sub: ctx.oidc.account?.accountId ?? null,
    refresh_token_rotated: Boolean(ctx.oidc.entities.RotatedRefreshToken),
  }));
  const grantError = (ctx, err) => emit({
    event: 'grant',
    ok: false,
    grant_type: grantType(ctx),
    client_id: ctx.oidc?.client?.clientId ?? null,
    error: err.error ?? 'server_error',
    error_description: err.error_description ?? null,
  });
  provider.on('grant.error', grantError);
  provider.on('server_error', (ctx, err) => {
    process.stderr.write(`server_error: ${err.stack}\n`);
    if (ctx.oidc?.route === 'token') grantError(ctx, err);
  });
  provider.on('backchannel.success', (ctx, client, accountId, sid) => emit({
    event: 'backchannel', ok: true, client_id: client.clientId, sub: accountId, sid: sid ?? null,
  }));
  provider.on('backchannel.error', (ctx, err, client, accountId, sid) => emit({
    event: 'backchannel',
    ok: false,
    client_id: client.clientId,
    sub: accountId,
    sid: sid ?? null,
    error: err.error ?? err.message,
  }));
  provider.on('authorization.success', (ctx) => emit({
    event: 'authorization', ok: true, client_id: ctx.oidc.client?.clientId ?? null,
  }));
  provider.on('authorization.error', (ctx, err) => emit({
    event: 'authorization',
    ok: false,
    client_id: ctx.oidc?.client?.clientId ?? null,
    error: err.error ?? 'server_error',
    error_description: err.error_description ?? null,
  }));
  provider.on('end_session.success', (ctx) => emit({
    event: 'end_session', client_id: ctx.oidc.client?.clientId ?? null,
  }));
}

function main() {
  const config = loadConfig(process.argv[2]);
  eventsFile = config.events_file;
  const store = new Store();
  store.load(config.state_file);
  const provider = buildProvider(config, store);
  if (config.acr_by_password) provider.use(acrByPassword(provider, config.acr_by_password));
  subscribe(provider);

  const server = provider.listen(config.port, '127.0.0.1', () => {
    emit({ event: 'ready', port: server.address().port, issuer: provider.issuer });
  });
  server.on('error', (err) => {
    process.stderr.write(`listen failed: ${err.stack}\n`);
    process.exit(1);
  });

  const shutdown = () => {
    store.save(config.state_file);
    server.close();
    server.closeAllConnections();
    process.exit(0);
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}

main();
