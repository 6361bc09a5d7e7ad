"""Build hook: ship the top-level ``prompts/`` templates inside the wheel as ``kbuild/prompts/``.

``prompts/`` stays the one source (reviewed as data, next to the README); this copies its
``*.toml`` files into the built package so an installed ``kbuild`` finds them without the repo.
Everything else about the package is declared in pyproject.toml.
"""

from pathlib import Path
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).resolve().parent / "prompts"
PACKAGED = Path("kbuild") / "prompts"  # relative to the build folder; read by kbuild/sources/llm/prompts.py


class build_py_with_prompts(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads prompts/ from the checkout itself
            return
        target = Path(self.build_lib) / PACKAGED
        target.mkdir(parents=True, exist_ok=True)
        for template in sorted(SOURCE.glob("*.toml")):
            shutil.copyfile(template, target / template.name)


setup(cmdclass={"build_py": build_py_with_prompts})
