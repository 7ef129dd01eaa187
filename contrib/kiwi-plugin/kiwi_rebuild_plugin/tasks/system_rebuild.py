"""kiwi-ng system rebuild: runs kiwi-stackbuild rebuild with the same
arguments, and kiwi-ng's global options translated to its own."""
import os
import shutil
import sys
from typing import Dict, List, Optional

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
        os.execv(program, argv)
