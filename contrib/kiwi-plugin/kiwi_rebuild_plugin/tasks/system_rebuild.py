"""kiwi-ng system rebuild: runs kiwi-stackbuild rebuild with the same
arguments, and kiwi-ng's global options translated to its own."""
import os
import shutil
import signal
import subprocess
import sys
import threading
from typing import IO, Dict, List, Optional

from kiwi.tasks.base import CliTask

# kiwi-ng global options that kiwi-stackbuild takes too, by their names there.
GLOBAL_VALUE_OPTIONS = {
    '--type': '--type',
    '--target-arch': '--target-arch',
    '--shared-cache-dir': '--shared-cache-dir',
    '--config': '--kiwi-config',
}


def rebuild_arguments(argv: List[str]) -> List[str]:
    """Everything after `system rebuild` on kiwi-ng's command line."""
    for i in range(len(argv) - 1):
        if argv[i] == 'system' and argv[i + 1] == 'rebuild':
            return argv[i + 2:]
    raise ValueError('no "system rebuild" in the command line')


def global_arguments(global_args: Dict) -> List[str]:
    """kiwi-ng's global options as kiwi-stackbuild spells them."""
    out: List[str] = []
    if global_args.get('--debug'):
        out.append('--debug')
    for profile in global_args.get('--profile') or []:
        out += ['--profile', profile]
    for kiwi_name, our_name in GLOBAL_VALUE_OPTIONS.items():
        value = global_args.get(kiwi_name)
        # kiwi-ng fills in its default shared cache dir; pass only what
        # differs from it, so kiwi-stackbuild's kiwi-ng keeps its default.
        if value and not (kiwi_name == '--shared-cache-dir' and value == '/var/cache/kiwi'):
            out += [our_name, str(value)]
    return out


def kiwi_stackbuild() -> Optional[str]:
    """The kiwi-stackbuild executable: $KIWI_STACKBUILD, else from PATH."""
    return os.environ.get('KIWI_STACKBUILD') or shutil.which('kiwi-stackbuild')


def copy_lines(source: IO[bytes], sink: IO[bytes], log: IO[bytes], lock: threading.Lock) -> None:
    """Copies every line of `source` to `sink` and to `log`, as it comes."""
    for line in iter(source.readline, b''):
        with lock:
            sink.write(line)
            sink.flush()
            log.write(line)
            log.flush()
    source.close()


def run_logged(argv: List[str], logfile: str) -> int:
    """Runs argv with its stdout and stderr also appended to logfile (where
    kiwi-ng has begun its own log), or, for kiwi-ng's `--logfile stdout`,
    its stderr sent to stdout. Returns its exit status; if it died of a
    signal, this process dies of the same one."""
    child: Optional[subprocess.Popen] = None

    def forward(signum: int, _frame: object) -> None:
        # A terminal's Ctrl-C reached the child already; anything else is
        # passed on, and the child decides how to end.
        if child is not None and signum != signal.SIGINT:
            child.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    if logfile == 'stdout':
        child = subprocess.Popen(argv, stderr=subprocess.STDOUT)
        status = child.wait()
    else:
        with open(logfile, 'ab') as log:
            child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            lock = threading.Lock()
            copies = [
                threading.Thread(target=copy_lines, args=(child.stdout, sys.stdout.buffer, log, lock)),
                threading.Thread(target=copy_lines, args=(child.stderr, sys.stderr.buffer, log, lock)),
            ]
            for copy in copies:
                copy.start()
            status = child.wait()
            for copy in copies:
                copy.join()
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


class SystemRebuildTask(CliTask):
    """Implements kiwi-ng system rebuild by handing over to kiwi-stackbuild."""

    def process(self) -> None:
        program = kiwi_stackbuild()
        if not program:
            sys.stderr.write(
                'kiwi-ng system rebuild: kiwi-stackbuild not found on PATH; '
                'install it or set KIWI_STACKBUILD\n'
            )
            sys.exit(1)
        argv = [program] + global_arguments(self.global_args) + ['rebuild'] + rebuild_arguments(sys.argv)
        sys.stdout.flush()
        sys.stderr.flush()
        logfile = self.global_args.get('--logfile')
        if logfile:
            sys.exit(run_logged(argv, str(logfile)))
        os.execv(program, argv)
