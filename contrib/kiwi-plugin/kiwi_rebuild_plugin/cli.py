"""The command line kiwi-ng shows for `system rebuild`.

kiwi-ng loads `typers` from the cli module of every plugin in the
kiwi.tasks entry point group whose module name ends in _plugin.
"""
from typing import Any, List

import typer
from typer.core import TyperGroup


class HandOverGroup(TyperGroup):
    """Takes every argument as it is: they belong to kiwi-stackbuild, which
    checks them, so kiwi-ng must not reject options it does not know."""

    def parse_args(self, ctx: Any, args: List[str]) -> List[str]:
        if args in (['--help'], ['-h']):
            return super().parse_args(ctx, ['--help'])
        return super().parse_args(ctx, [])


rebuild = typer.Typer(
    cls=HandOverGroup,
    add_completion=False,
    subcommand_metavar="[-- KIWI-NG-ARGS]",
)


@rebuild.callback(invoke_without_command=True)
def system_rebuild(ctx: typer.Context):
    """
    Build an image from stored root trees with kiwi-stackbuild.

    \b
    W1  kiwi-ng system rebuild --description D --keep-root REF -- --target-dir T
        build D, then store its root tree at REF
    W2  kiwi-ng system rebuild --root REF -- --target-dir T
        unpack REF, kiwi-ng system create with its /image
    W3  kiwi-ng system rebuild --root REF -- --description D --target-dir T
        unpack REF, build D on it (no bootstrap)
    W4  kiwi-ng system rebuild --description D -- --target-dir T
        D says derived_from="REF": merge D into REF's description, build

    --root may be repeated to stack images; --keep-root works with all.
    Every argument is handed to `kiwi-stackbuild rebuild` as written, and
    kiwi-ng's --profile, --type, --target-arch, --shared-cache-dir, --config
    and --debug become its own; --logfile gets its output too. See
    `kiwi-stackbuild rebuild --help` for all its options.
    """
    cli = ctx.obj
    cli.subcommand_args['rebuild'] = {'help': False}
    cli.global_args['rebuild'] = True
    cli.global_args['command'] = 'rebuild'
    cli.global_args['system'] = True
    cli.cli_ok = True


typers = {'rebuild': rebuild}
