/**
 * `imageio-nbd engine-server`: run the fake oVirt engine until SIGINT or SIGTERM. Once it
 * listens, stdout has the API URL on its first line, then one line per object a client needs:
 *   storage_domain=data
 *   host=host1 id=... hardware_uuid=... vdsm_id=... status=up
 *   disk=ID name=disk1 size=1073741824            (one per --disk)
 */
import { promises as fsp } from 'node:fs';
import yargs from 'yargs';
import { parseSize } from '../../src/core/size';
import { createLogger } from '../../src/core/log';
import { readTlsFiles, untilStopSignal } from '../subcommand';
import { readVdsmId, VDSM_ID_FILE } from '../../src/engine/placement';
import { EngineControlServer } from './control';
import { FakeEngine, type FakeHostSpec } from './fake-engine';

export async function runEngineServerCommand(argv: string[]): Promise<number> {
  let args;
  try {
    args = await yargs(argv)
      .scriptName('imageio-nbd engine-server')
      .usage(
        '$0 [options]\n\nA fake oVirt engine for tests and demos: the REST API subset an image transfer needs ' +
          '(SSO login, disks, storage domains, data centers, hosts, image transfers), with each host\'s imageio ' +
          'played by the built-in imageio server. Log in with --username (default admin@internal) and the ' +
          'password from --password-file (default: "password").',
      )
      .option('hosts', { type: 'number', default: 3, describe: 'number of hosts (host1, host2, ...)' })
      .option('local-host', { type: 'number', describe: "give host N this machine's vdsm id (/etc/vdsm/vdsm.id, or the file IMAGEIO_NBD_VDSM_ID_FILE names), as if imageio-nbd ran on it" })
      .option('host-rate', { type: 'string', describe: "bandwidth of each host's network, e.g. 200M (bytes per second, shared by the host's transfers; default unlimited)" })
      .option('disk', { type: 'string', array: true, describe: 'create an empty disk of this size (repeatable)' })
      .option('storage-domain', { type: 'string', default: 'data', describe: 'name of the storage domain' })
      .option('dir', { type: 'string', describe: 'directory for disk images and sockets (default: a temporary one, removed at exit)' })
      .option('port', { type: 'number', default: 0, describe: 'TCP port of the API (0: ephemeral)' })
      .option('address', { type: 'string', default: '127.0.0.1', describe: 'address to listen on' })
      .option('tls-cert', { type: 'string', describe: 'PEM certificate: the engine and the hosts serve HTTPS' })
      .option('tls-key', { type: 'string', describe: 'PEM private key' })
      .option('username', { type: 'string', default: 'admin@internal', describe: 'the one user' })
      .option('ordinary-user', { type: 'boolean', default: false, describe: 'the user is not an administrator: it cannot list image transfers, and sees no host or data center' })
      .option('password-file', { type: 'string', describe: "file whose first line is the user's password" })
      .option('control', { type: 'string', describe: 'unix socket for the control service (faults, state)' })
      .option('v', { type: 'count', describe: 'more logging (-v debug)' })
      .check((a) => {
        if (!!a['tls-cert'] !== !!a['tls-key']) throw new Error('--tls-cert and --tls-key go together');
        if (!Number.isSafeInteger(a.hosts) || a.hosts < 1 || a.hosts > 64) throw new Error('--hosts: from 1 to 64');
        if (a['local-host'] !== undefined && !(a['local-host'] >= 1 && a['local-host'] <= a.hosts)) throw new Error('--local-host: a host number from 1 to --hosts');
        return true;
      })
      .strict()
      .version(false)
      .help()
      .exitProcess(false)
      .fail((msg, err) => {
        throw err ?? new Error(msg);
      })
      .parseAsync();
  } catch (err) {
    process.stderr.write(`imageio-nbd engine-server: ${(err as Error).message}\n`);
    return 1;
  }
  if (args.help) return 0;
  const logger = createLogger({ verbose: args.v });

  let engine: FakeEngine | undefined;
  let control: EngineControlServer | undefined;
  const lines: string[] = [];
  try {
    const hosts: FakeHostSpec[] = Array.from({ length: args.hosts }, (_, i) => ({ name: `host${i + 1}` }));
    if (args['local-host'] !== undefined) {
      const file = process.env.IMAGEIO_NBD_VDSM_ID_FILE || VDSM_ID_FILE;
      const id = readVdsmId(file);
      if (!id) throw new Error(`--local-host: cannot read this machine's vdsm id from ${file} (not an oVirt host?)`);
      hosts[args['local-host'] - 1].vdsmId = id;
    }
    const password = args['password-file'] ? (await fsp.readFile(args['password-file'], 'utf8')).split('\n')[0].replace(/\r$/, '') : undefined;
    const tls = await readTlsFiles(args['tls-cert'], args['tls-key']);
    if (args.dir) await fsp.mkdir(args.dir, { recursive: true });
    engine = new FakeEngine({
      dir: args.dir,
      hosts,
      tls,
      tcp: { port: args.port, host: args.address },
      username: args.username,
      password,
      admin: !args['ordinary-user'],
      hostRate: args['host-rate'] !== undefined ? parseSize(args['host-rate'], 'host rate') : undefined,
      storageDomain: args['storage-domain'],
      logger,
    });
    await engine.start();
    for (const size of args.disk ?? []) {
      const d = engine.addDisk({ size: parseSize(size, 'disk size') });
      lines.push(`disk=${d.id} name=${d.name} size=${d.size}`);
    }
    if (args.control) {
      control = new EngineControlServer(engine, args.control);
      await control.start();
    }
  } catch (err) {
    process.stderr.write(`imageio-nbd engine-server: ${(err as Error).message}\n`);
    await control?.close().catch(() => undefined);
    await engine?.close().catch(() => undefined);
    return 1;
  }

  const st = engine.state();
  process.stdout.write(
    [
      engine.apiUrl,
      `storage_domain=${st.storageDomain.name}`,
      ...st.hosts.map((h) => `host=${h.name} id=${h.id} hardware_uuid=${h.hardwareUuid} vdsm_id=${h.vdsmId} status=${h.status}`),
      ...lines,
    ].join('\n') + '\n',
  );

  await untilStopSignal();
  await control?.close();
  await engine.close();
  return 0;
}
