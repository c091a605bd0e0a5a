#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS node
// Launcher of `page-server`: the compiled CLI lives in dist/ (npm run build:ts).
// Its first line and the delete below: as in bin/criu.js (NODE_EXTRA_CA_CERTS costs every start).
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
