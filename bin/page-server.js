#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS node
// Launcher of `page-server`: the compiled CLI lives in dist/ (npm run build:ts).
// Its first line starts node without NODE_EXTRA_CA_CERTS: node reads and parses that file of
// certificates at every start (~40 ms here, where it names the system's whole bundle), and criu-ts
// opens no TLS connection. Run as `node bin/page-server.js`, that start has paid for it already; the variable
// is still taken out of the environment of the processes criu-ts starts.
delete process.env.NODE_EXTRA_CA_CERTS;
import('../dist/src/cli/page-server.js')
  .then((mod) => mod.main())
  .catch((err) => {
    if (err && err.code === 'ERR_MODULE_NOT_FOUND' && String(err.message).includes('dist/src/cli/page-server.js')) {
      process.stderr.write("page-server: dist/ is not built: run 'npm run build:ts' in the criu-ts checkout\n");
    } else {
      process.stderr.write(`Error (page-server): ${err && err.message ? err.message : String(err)}\n`);
    }
    process.exitCode = 1;
  });
