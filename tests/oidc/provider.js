// A real OpenID Provider for guestgate's sign-in tests: `oidc-provider` (a certified
// implementation) on an ephemeral loopback port, with two users, a login form, and a signing
// key that can be rotated while it runs.
//
//   node provider.js            prints `{"issuer": "http://127.0.0.1:PORT"}` on one line
//
// Environment (all optional):
//   CLIENT_SECRET      the secret of client `guestgate` (default: test-client-secret)
//   ACCESS_TTL_SECS    access token lifetime (default 300)
//   ID_TOKEN_TTL_SECS  ID token lifetime (default 300)
//   CLAIMS_IN_ID_TOKEN 0: profile and groups only at userinfo, not in the ID token
//
// Test-only endpoints (never part of a real IdP):
//   POST /__test/rotate   replaces the signing key; prints nothing, answers the new kid
//   GET  /__test/stats    {"jwks": N, "token": N, "refresh": N, "userinfo": N, "kid": "..."}
//   POST /__test/token-fail?status=429&error=slow_down
//                         the token endpoint answers that status and OAuth error from now on
//                         (until status=0), as a rate-limiting or misconfigured IdP would
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import http from 'node:http';

import Provider from 'oidc-provider';

const CLIENT_SECRET = process.env.CLIENT_SECRET || 'test-client-secret';
const ACCESS_TTL = Number(process.env.ACCESS_TTL_SECS || 300);
const ID_TOKEN_TTL = Number(process.env.ID_TOKEN_TTL_SECS || 300);
const CLAIMS_IN_ID_TOKEN = process.env.CLAIMS_IN_ID_TOKEN !== '0';

// Matches guestgate's test data document: alice is a regular user, gary a guest. nina has
// no groups claim at all (neither in the ID token nor at userinfo); erin has an empty one.
const USERS = {
  alice: { name: 'Alice Adams', email: 'alice@example.com', groups: ['confluence-users'] },
  gary: { name: 'Gary Guest', email: 'gary@acme.example', groups: ['acme-guests'] },
  nina: { name: 'Nina Nogroups', email: 'nina@acme.example' },
  erin: { name: 'Erin Empty', email: 'erin@acme.example', groups: [] },
};

const stats = { jwks: 0, token: 0, refresh: 0, userinfo: 0, kid: '' };

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: `key-${randomUUID().slice(0, 8)}`, alg: 'RS256', use: 'sig' };
}

function build(issuer, key) {
  const provider = new Provider(issuer, {
    clients: [{
      client_id: 'guestgate',
      client_secret: CLIENT_SECRET,
      // The gateway's port is only known once it runs; any loopback port is accepted below.
      redirect_uris: ['http://127.0.0.1/_guestgate/callback'],
      post_logout_redirect_uris: ['http://127.0.0.1/_guestgate/signed-out'],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    jwks: { keys: [key] },
    cookies: { keys: ['guestgate-test-idp-cookie-key'] },
    claims: {
      openid: ['sub'],
      profile: ['preferred_username', 'name'],
      email: ['email'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
    // By default scope claims go into the ID token itself (as Keycloak, Okta and Entra ID
    // can be set up to do); with CLAIMS_IN_ID_TOKEN=0 only userinfo has them.
    conformIdTokenClaims: !CLAIMS_IN_ID_TOKEN,
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: { enabled: true },
      revocation: { enabled: true },
    },
    pkce: { required: () => true },
    // A first-party client: no consent screen, a grant for what it asks.
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) {
        const found = await ctx.oidc.provider.Grant.find(grantId);
        if (found) return found;
      }
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid offline_access profile email groups');
      await grant.save();
      return grant;
    },
    async issueRefreshToken(ctx, client) {
      return client.grantTypeAllowed('refresh_token');
    },
    async findAccount(ctx, sub) {
      const user = USERS[sub];
      if (!user) return undefined;
      return {
        accountId: sub,
        async claims() {
          const claims = {
            sub, preferred_username: sub, name: user.name, email: user.email,
          };
          if (user.groups) claims.groups = user.groups;
          return claims;
        },
      };
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    ttl: {
      AccessToken: ACCESS_TTL,
      IdToken: ID_TOKEN_TTL,
      AuthorizationCode: 60,
      RefreshToken: 3600,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
    },
  });
  const loopback = (value, path) => {
    try {
      const u = new URL(value);
      return u.protocol === 'http:' && u.hostname === '127.0.0.1' && u.pathname === path
        && u.search === '' && u.hash === '';
    } catch {
      return false;
    }
  };
  provider.Client.prototype.redirectUriAllowed = function allowed(value) {
    return loopback(value, '/_guestgate/callback');
  };
  provider.Client.prototype.postLogoutRedirectUriAllowed = function allowed(value) {
    return loopback(value, '/_guestgate/signed-out');
  };
  provider.on('grant.success', (ctx) => {
    stats.token += 1;
    if (ctx.oidc.params?.grant_type === 'refresh_token') stats.refresh += 1;
  });
  stats.kid = key.kid;
  return provider;
}

function escape(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return new URLSearchParams(body);
}

// The login form: a user name, no password (this IdP only exists for tests).
async function interaction(provider, req, res) {
  const details = await provider.interactionDetails(req, res);
  if (req.method === 'POST') {
    const form = await readForm(req);
    const login = form.get('login') || '';
    if (!USERS[login]) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(`<!DOCTYPE html><p id="error">Unknown user ${escape(login)}</p>`);
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: login } }, {
      mergeWithLastSubmission: false,
    });
    return;
  }
  if (details.prompt.name !== 'login') {
    // Consent is granted by loadExistingGrant; nothing else is asked.
    await provider.interactionFinished(req, res, {}, { mergeWithLastSubmission: true });
    return;
  }
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(`<!DOCTYPE html><html><head><title>Test IdP sign-in</title></head><body>
<form method="post" action="/interaction/${escape(details.uid)}">
<label>User <input id="login" name="login" autofocus></label>
<button id="submit" type="submit">Sign in</button>
</form></body></html>`);
}

let provider;
let tokenFail = null;
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const fail = (e) => {
    res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(String(e?.stack || e));
  };
  if (url.pathname === '/__test/rotate' && req.method === 'POST') {
    // A new provider instance with only the new key; sessions, grants and codes live in the
    // module-level memory adapter and survive the swap.
    provider = build(provider.issuer, newKey());
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kid: stats.kid }));
    return;
  }
  if (url.pathname === '/__test/token-fail' && req.method === 'POST') {
    const status = Number(url.searchParams.get('status') || 0);
    tokenFail = status ? { status, error: url.searchParams.get('error') || 'unknown' } : null;
    res.writeHead(204);
    res.end();
    return;
  }
  if (url.pathname === '/token' && tokenFail) {
    stats.token_failed = (stats.token_failed || 0) + 1;
    res.writeHead(tokenFail.status, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: tokenFail.error }));
    return;
  }
  if (url.pathname === '/__test/stats') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(stats));
    return;
  }
  if (url.pathname.startsWith('/interaction/')) {
    interaction(provider, req, res).catch(fail);
    return;
  }
  if (url.pathname === '/jwks') stats.jwks += 1;
  if (url.pathname === '/me') stats.userinfo += 1;
  provider.callback()(req, res);
});

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  provider = build(issuer, newKey());
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

// The test process closes our stdin when it ends: never outlive it.
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
