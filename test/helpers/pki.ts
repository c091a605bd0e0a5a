// Certificates for TLS tests, made with the openssl command: a CA, and certificates it signs
// (EC P-256 keys), each naming the subject alternative names asked for. Files go into a test's
// own directory: NAME.pem (certificate) and NAME.key (private key, 0600).
import { execFileSync } from 'node:child_process';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

const KEY_ARGS = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

export interface Pki {
  dir: string;
  /** Path of the CA's certificate. */
  ca: string;
  /** Issue a certificate for `name` with these SANs ("IP:127.0.0.1", "DNS:host"): paths of it and its key. */
  issue(name: string, sans: string[]): { cert: string; key: string };
}

/** A new CA in dir (files CANAME.pem, CANAME.key). */
export function makePki(dir: string, caName = 'ca'): Pki {
  openssl(
    [
      'req',
      '-x509',
      ...KEY_ARGS,
      '-keyout',
      `${caName}.key`,
      '-out',
      `${caName}.pem`,
      '-days',
      '2',
      '-subj',
      `/CN=${caName}`,
    ],
    dir,
  );
  return {
    dir,
    ca: join(dir, `${caName}.pem`),
    issue(name, sans) {
      openssl(['req', ...KEY_ARGS, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`], dir);
      writeFileSync(join(dir, `${name}.ext`), sans.length > 0 ? `subjectAltName=${sans.join(',')}\n` : '\n');
      openssl(
        [
          'x509',
          '-req',
          '-in',
          `${name}.csr`,
          '-CA',
          `${caName}.pem`,
          '-CAkey',
          `${caName}.key`,
          '-CAcreateserial',
          '-out',
          `${name}.pem`,
          '-days',
          '2',
          '-extfile',
          `${name}.ext`,
        ],
        dir,
      );
      chmodSync(join(dir, `${name}.key`), 0o600);
      return { cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`) };
    },
  };
}
