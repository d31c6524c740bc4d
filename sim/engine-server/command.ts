/**
 * `imageio-nbd engine-server`: run the fake oVirt engine until a stop signal (SIGINT, SIGTERM,
 * SIGQUIT). Once it listens, stdout has the API URL on its first line, then one line per object a client needs:
 *   storage_domain=data
 *   host=host1 id=... hardware_uuid=... vdsm_id=... status=up
 *   disk=ID name=disk1 size=1073741824            (one per --disk)
 */
import { promises as fsp } from 'node:fs';
import { allValues, formatHelp, lastValue, optionLabel, OptionParser, wholeNumberOption, type OptionRow } from '../../src/core/command-line';
import { parseSize } from '../../src/core/size';
import { createLogger } from '../../src/core/log';
import { announce, readTlsFiles, stopSignal, type StopSignals } from '../subcommand';
import { readVdsmId, VDSM_ID_FILE } from '../../src/engine/placement';
import { EngineControlServer } from './control';
import { FakeEngine, type FakeHostSpec } from './fake-engine';

const OPTIONS: readonly OptionRow[] = [
  { name: 'hosts', type: 'string', arg: 'N', describe: 'Number of hosts, host1, host2, ... (default 3, at most 64)' },
  { name: 'local-host', type: 'string', arg: 'N', describe: "Give host N this machine's vdsm id (/etc/vdsm/vdsm.id, or the file IMAGEIO_NBD_VDSM_ID_FILE names), as if imageio-nbd ran on it" },
  { name: 'host-rate', type: 'string', arg: 'RATE', describe: "Bandwidth of each host's network, e.g. 200M (bytes per second, shared by the host's transfers; default unlimited)" },
  { name: 'disk', type: 'string', arg: 'SIZE', describe: 'Create an empty disk of this size (repeatable)' },
  { name: 'storage-domain', type: 'string', arg: 'NAME', describe: 'Name of the storage domain (default data)' },
  { name: 'dir', type: 'string', arg: 'DIR', describe: 'Directory for disk images and sockets (default: a temporary one, removed at exit)' },
  { name: 'port', type: 'string', arg: 'PORT', describe: 'TCP port of the API (default 0: an ephemeral one)' },
  { name: 'address', type: 'string', arg: 'ADDR', describe: 'Address to listen on (default 127.0.0.1)' },
  { name: 'tls-cert', type: 'string', arg: 'FILE', describe: 'PEM certificate: the engine and the hosts serve HTTPS (with --tls-key)' },
  { name: 'tls-key', type: 'string', arg: 'FILE', describe: 'PEM private key' },
  { name: 'username', type: 'string', arg: 'USER', describe: 'The one user (default admin@internal)' },
  { name: 'ordinary-user', type: 'flag', describe: 'The user is not an administrator: it cannot list image transfers, and sees no host or data center' },
  { name: 'password-file', type: 'string', arg: 'FILE', describe: 'File whose first line is the user\'s password (default: "password")' },
  { name: 'control', type: 'string', arg: 'SOCKET', describe: 'Unix socket for the control service (faults, state)' },
  { name: 'verbose', short: 'v', type: 'count', describe: 'More logging (-v: debug)' },
  { name: 'help', short: 'h', type: 'flag', describe: 'Print this help and exit' },
];

export function engineServerHelp(): string {
  return formatHelp({
    usage: ['imageio-nbd engine-server [OPTIONS]'],
    description: `A fake oVirt engine for tests and demos: the REST API subset an image transfer needs (SSO
login, disks, storage domains, data centers, hosts, image transfers), with each host's imageio
played by the built-in imageio server, until SIGINT, SIGTERM or SIGQUIT. Once listening, stdout
has the API URL on its first line, then storage_domain=, one host= line per host and one disk=
line per --disk.`,
    sections: [{ title: 'options:', rows: OPTIONS.map((o) => [optionLabel(o), o.describe] as const) }],
    exitStatus: [
      ['0', 'stopped by a signal'],
      ['1', 'bad arguments, or the engine could not start'],
    ],
  });
}

/** The command line, checked: everything the engine needs, or an Error with one line. */
function parseCommandLine(argv: string[]) {
  const { values: a, positionals } = new OptionParser(OPTIONS).parse(argv);
  if (a.help) return { help: true } as const;
  if (positionals.length) throw new Error(`unexpected argument '${positionals[0]}' (see --help)`);
  const tlsCert = lastValue(a['tls-cert']);
  const tlsKey = lastValue(a['tls-key']);
  if (!!tlsCert !== !!tlsKey) throw new Error('--tls-cert and --tls-key go together');
  const hosts = wholeNumberOption(a.hosts, '--hosts', 1, 64) ?? 3;
  return {
    hosts,
    localHost: wholeNumberOption(a['local-host'], '--local-host', 1, hosts),
    disks: allValues(a.disk).map((d) => parseSize(d, 'disk size')),
    storageDomain: lastValue(a['storage-domain']) ?? 'data',
    dir: lastValue(a.dir),
    port: wholeNumberOption(a.port, '--port', 0, 65535) ?? 0,
    address: lastValue(a.address) ?? '127.0.0.1',
    tlsCert,
    tlsKey,
    username: lastValue(a.username) ?? 'admin@internal',
    ordinaryUser: Boolean(a['ordinary-user']),
    hostRate: lastValue(a['host-rate']),
    passwordFile: lastValue(a['password-file']),
    control: lastValue(a.control),
    verbose: (a.verbose as number | undefined) ?? 0,
  } as const;
}

export async function runEngineServerCommand(argv: string[], signals: StopSignals): Promise<number> {
  let args;
  try {
    args = parseCommandLine(argv);
  } catch (err) {
    process.stderr.write(`imageio-nbd engine-server: ${(err as Error).message}\n`);
    return 1;
  }
  if ('help' in args) {
    announce(`${engineServerHelp()}\n`);
    return 0;
  }
  const logger = createLogger({ verbose: args.verbose });
  const stop = stopSignal(signals);

  let engine: FakeEngine | undefined;
  let control: EngineControlServer | undefined;
  const lines: string[] = [];
  try {
    const hosts: FakeHostSpec[] = Array.from({ length: args.hosts }, (_, i) => ({ name: `host${i + 1}` }));
    if (args.localHost !== undefined) {
      const file = process.env.IMAGEIO_NBD_VDSM_ID_FILE || VDSM_ID_FILE;
      const id = readVdsmId(file);
      if (!id) throw new Error(`--local-host: cannot read this machine's vdsm id from ${file} (not an oVirt host?)`);
      hosts[args.localHost - 1].vdsmId = id;
    }
    const password = args.passwordFile ? (await fsp.readFile(args.passwordFile, 'utf8')).split('\n')[0].replace(/\r$/, '') : undefined;
    const tls = await readTlsFiles(args.tlsCert, args.tlsKey);
    if (args.dir) await fsp.mkdir(args.dir, { recursive: true });
    engine = new FakeEngine({
      dir: args.dir,
      hosts,
      tls,
      tcp: { port: args.port, host: args.address },
      username: args.username,
      password,
      admin: !args.ordinaryUser,
      hostRate: args.hostRate !== undefined ? parseSize(args.hostRate, 'host rate') : undefined,
      storageDomain: args.storageDomain,
      logger,
    });
    await engine.start();
    for (const size of args.disks) {
      const d = engine.addDisk({ size });
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
    stop.cancel();
    return 1;
  }

  const st = engine.state();
  announce(
    [
      engine.apiUrl,
      `storage_domain=${st.storageDomain.name}`,
      ...st.hosts.map((h) => `host=${h.name} id=${h.id} hardware_uuid=${h.hardwareUuid} vdsm_id=${h.vdsmId} status=${h.status}`),
      ...lines,
    ].join('\n') + '\n',
  );

  await stop.signal;
  await control?.close();
  await engine.close();
  return 0;
}
