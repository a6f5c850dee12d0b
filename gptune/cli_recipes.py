"""``gptune recipes ...``: list, copy, locate, print, check and document recipes and Accelerate configs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

recipes_app = typer.Typer(help="List, copy, check and document recipes.", no_args_is_help=True,
                          context_settings={"help_option_names": ["-h", "--help"]})
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: --set train.lr=3e-4 "
                                                                  "(repeatable; applied last).")]


@recipes_app.command("validate")
def recipes_validate(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML to check.")],
    set_: SetOpt = None,
) -> None:
    """Check a recipe (keys, types, ranges) without training anything."""
    from gptune.recipes import load_recipe

    r = load_recipe(recipe, None, set_)
    typer.echo(f"{recipe}: ok (run folder {r.run_dir})")


@recipes_app.command("show")
def recipes_show(
    recipe: Annotated[Path | None, typer.Argument(help="Recipe YAML (absent: the defaults).")] = None,
    set_: SetOpt = None,
) -> None:
    """Print the fully resolved recipe (defaults < YAML < --set)."""
    from gptune.recipes import load_recipe

    typer.echo(load_recipe(recipe, None, set_).to_yaml(), nl=False)


@recipes_app.command("list")
def recipes_list() -> None:
    """The shipped recipes and Accelerate configs: name and one-line purpose."""
    from gptune.recipes import all_shipped, purpose

    known = all_shipped()
    width = max(map(len, known))
    for name, path in known.items():
        typer.echo(f"{name:<{width}}  {purpose(path)}")


@recipes_app.command("cp")
def recipes_cp(
    name: Annotated[str, typer.Argument(help="A shipped recipe or config (`gptune recipes list`).")],
    dest: Annotated[Path | None, typer.Argument(help="File or folder to copy to (default ./NAME.yaml).")] = None,
) -> None:
    """Copy a shipped recipe or Accelerate config to edit (an existing file is never replaced)."""
    from gptune.recipes import copy_shipped

    typer.echo(str(copy_shipped(name, dest)))


@recipes_app.command("path")
def recipes_path(
    name: Annotated[str, typer.Argument(help="A shipped recipe or config (`gptune recipes list`).")],
) -> None:
    """Print where a shipped file is (accelerate launch --config_file "$(gptune recipes path fsdp)" ...)."""
    from gptune.recipes import ACCELERATE, resolve_shipped, shipped, shipped_name

    kind = "recipe" if shipped_name(name) in shipped() else ACCELERATE
    typer.echo(str(resolve_shipped(name, kind, "recipes path")))


@recipes_app.command("docs")
def recipes_docs() -> None:
    """Print the Markdown reference of every recipe key (the source of docs/recipes.md)."""
    from gptune.recipe_docs import recipe_reference

    typer.echo(recipe_reference())
