"""Python's documentation as training text: reStructuredText to plain text in the held-out text's conventions,
cut into sections, and the held-out filter applied to them."""

import pytest

from bonsai_export.corpus import docs_sections, without_held_out
from bonsai_export.errors import BonsaiError
from bonsai_export.rst_text import inline, rst_sections
from bonsai_export.validate import held_out_text

SOURCE = """\
.. _compound:

*******************
Compound statements
*******************

.. index:: pair: compound; statement

The :keyword:`if` statement calls :func:`print` and :meth:`~str.join`, see :ref:`the rules <rules>`
and ``x < y``::

   if x < y: print(x)

.. function:: len(s)
   :noindex:

   Return the length of *s*.

   .. versionadded:: 3.2

Second section
==============

.. toctree::
   :maxdepth: 2

   tutorial/index.rst

Text after a `link <https://example.org>`_.
"""


def test_inline_roles_become_the_text_builders_form():
    assert inline(":func:`print`") == '"print()"'
    assert inline(":meth:`~str.join`") == '"join()"'
    assert inline(":class:`collections.OrderedDict`") == '"collections.OrderedDict"'
    assert inline(":ref:`the rules <rules>`") == "the rules"
    assert inline("``a + b``") == '"a + b"'
    assert inline(":pep:`8`") == "PEP 8"
    assert inline(":py:func:`open`") == '"open()"'


def test_sections_drop_markup_and_keep_the_prose():
    first, second = rst_sections(SOURCE)
    assert first.splitlines()[:2] == ["Compound statements", "*" * len("Compound statements")]
    assert "index" not in first and "_compound" not in first and ".." not in first
    assert 'The "if" statement calls "print()" and "join()", see the rules\nand "x < y":' in first
    assert "   if x < y: print(x)" in first
    assert "len(s)" in first and ":noindex:" not in first and "Return the length of *s*." in first
    assert "New in version 3.2" in first
    assert second.startswith("Second section\n")
    assert "toctree" not in second and "tutorial/index.rst" not in second and "maxdepth" not in second
    assert "Text after a link." in second


def test_docs_group_drops_sections_that_share_the_held_out_text(tmp_path):
    held = held_out_text(None)
    topic = held[held.index("It selects exactly one of the suites"):][:300]
    (tmp_path / "a.rst").write_text("Kept\n====\n\n" + "Ternary weights need no multiplier at all. " * 4 + "\n")
    (tmp_path / "b.rst.txt").write_text("Copied\n======\n\n" + topic + "\n")
    (tmp_path / "c.txt").write_text("Not a source\n============\n\n" + "Ignored text of some length. " * 5)
    sections = docs_sections(tmp_path)
    assert [s.splitlines()[0] for s in sections] == ["Kept", "Copied"]
    kept = without_held_out([("docs", s) for s in sections], held)
    assert [d.splitlines()[0] for _, d in kept] == ["Kept"]


def test_a_folder_without_sources_is_one_clear_error(tmp_path):
    with pytest.raises(BonsaiError, match="no reStructuredText files; install Python's documentation"):
        docs_sections(tmp_path)
