"""The ``assd`` command line: a thin click shell over the Python API.

Each command parses its options, calls one function of the package and prints the result. Errors the
user can fix (``UserError``) print one line and exit 2; failed checks (``CheckFailed``) exit 1.
"""

from __future__ import annotations

import errno
import sys

import click

from assd.errors import CheckFailed, UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="assd")
def cli():
    """ASSD: train the attentive SSD detector, export it, build TensorRT engines, benchmark and verify."""


def main(argv=None) -> None:
    """Console-script entry point: runs the group and turns our errors into one-line messages."""
    try:
        cli.main(args=argv, prog_name="assd", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # click's own usage errors, in one line like ours
        context = getattr(exc, "ctx", None)
        hint = f" (see '{context.command_path} --help')" if context is not None else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except (UserError, CheckFailed) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # a filesystem fault no command turned into a UserError: still one line, exit 2
        where = f"{exc.filename}: " if exc.filename else ""
        code = errno.errorcode.get(exc.errno, exc.errno) if exc.errno else type(exc).__name__
        click.echo(f"error: {where}{exc.strerror or exc} ({code})", err=True)
        sys.exit(UserError.exit_code)
    except MemoryError:
        click.echo("error: out of memory: use a smaller --batch / --batch-size or input, or a machine with more "
                   "memory", err=True)
        sys.exit(UserError.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)


def _register_commands() -> None:
    """Add every stage's commands to the group (imports stay light: heavy modules load inside commands)."""
    from assd.commands import (
        convert,
        demo,
        deploy,
        evaluation,
        models,
        precision,
        predict,
        serve,
        tensorrt,
        training,
    )
    cli.add_command(models.info)
    cli.add_command(evaluation.eval_command)
    cli.add_command(predict.predict_command)
    cli.add_command(evaluation.attention_command)
    cli.add_command(training.train_command)
    cli.add_command(deploy.export_command)
    cli.add_command(deploy.bench)
    cli.add_command(deploy.eval_engine_command)
    cli.add_command(tensorrt.calibrate_command)
    cli.add_command(tensorrt.build_engine_command)
    cli.add_command(precision.debug_precision_command)
    cli.add_command(demo.demo_command)
    cli.add_command(convert.convert_command)
    cli.add_command(serve.serve_command)


_register_commands()


if __name__ == "__main__":
    main()
