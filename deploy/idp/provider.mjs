// The lab's and the tests' identity provider: oidc-provider (OpenID
// Certified, from the npm registry) with demo users read from a JSON file
// on every sign-in, so a test can move a user out of a group at the
// provider while it runs. Not for production: the sign-in form is
// oidc-provider's development one (any password is accepted for a user
// that exists in the file).
//
// node provider.mjs --issuer http://127.0.0.1:9000 --users users.json \
//   --clients clients.json
import { readFileSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import { parseArgs } from 'node:util';
import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    issuer: { type: 'string' },
    users: { type: 'string' },
    clients: { type: 'string' },
    'token-ttl': { type: 'string', default: '300' },
  },
});
for (const k of ['issuer', 'users', 'clients']) {
  if (!args[k]) {
    console.error(`missing --${k}`);
    process.exit(2);
  }
}

const users = () => JSON.parse(readFileSync(args.users, 'utf8'));
const clients = JSON.parse(readFileSync(args.clients, 'utf8'));
// A fresh signing key per start: tokens are signed with a key of the
// provider's own, published at its JWKS endpoint.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: `k${Date.now()}`, use: 'sig', alg: 'RS256' };

const provider = new Provider(args.issuer, {
  clients,
  jwks: { keys: [jwk] },
  pkce: { required: () => true },
  scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  conformIdTokenClaims: false, // the groups claim goes into the ID token
  ttl: { IdToken: Number(args['token-ttl']), AccessToken: Number(args['token-ttl']) },
  features: { devInteractions: { enabled: true } },
  // First-party clients: no consent screen.
  loadExistingGrant: async (ctx) => {
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile groups');
    grant.addOIDCClaims(['sub', 'email', 'email_verified', 'name', 'groups']);
    await grant.save();
    return grant;
  },
  findAccount: async (ctx, sub) => {
    const u = users()[sub];
    if (!u) return undefined;
    return {
      accountId: sub,
      claims: async () => ({
        sub,
        email: u.email,
        email_verified: true,
        name: u.name,
        groups: u.groups,
        amr: u.amr,
      }),
    };
  },
});
provider.proxy = true;
const url = new URL(args.issuer);
provider.listen(Number(url.port), url.hostname, () => {
  console.log(`oidc-provider listening at ${args.issuer}`);
});
