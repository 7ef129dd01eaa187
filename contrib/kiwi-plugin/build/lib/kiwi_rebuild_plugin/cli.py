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


rebuild = typer.Typer(cls=HandOverGroup, add_completion=False)


@rebuild.callback(invoke_without_command=True)
def system_rebuild(ctx: typer.Context):
    """
    Build an image from stored root trees with kiwi-stackbuild.

    Every argument is handed to `kiwi-stackbuild rebuild` as written, e.g.
    `kiwi-ng system rebuild --root NAME -- --target-dir DIR`; see
    `kiwi-stackbuild rebuild --help`.
    """
    cli = ctx.obj
    cli.subcommand_args['rebuild'] = {'help': False}
    cli.global_args['rebuild'] = True
    cli.global_args['command'] = 'rebuild'
    cli.global_args['system'] = True
    cli.cli_ok = True


typers = {'rebuild': rebuild}
