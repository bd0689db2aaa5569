"""Binary click labels from a label column, directly or through a comparison rule.

`label="click"` takes a column that is already 0/1 (or bool); `label="rating==5"`,
`"rating>3"`, `"rating>=4"`, `"rating<2"`, `"rating<=2"` or `"rating!=0"` compares a numeric
column with a number. The rule is parsed, never evaluated as code, and saved as its text.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .columns import ArrowColumn, numeric_matrix

_OPERATORS = {"==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le,
              ">": operator.gt, "<": operator.lt}
_NUMBER = r"[-+]?\d+(\.\d*)?([eE][-+]?\d+)?"
_RULE = re.compile(rf"^\s*(?P<column>.+?)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<threshold>{_NUMBER})\s*$")


@dataclass(frozen=True)
class LabelRule:
    """How the 0/1 label is computed from one column.

    Attributes:
        column: the source column.
        op: a comparison (`==`, `!=`, `>`, `>=`, `<`, `<=`), or None when the column is already binary.
        threshold: the number compared with.

    Example:
        >>> import pyarrow as pa
        >>> rule = LabelRule.parse("rating==5", ["user", "rating"])
        >>> rule.apply(pa.array([5, 3, 5])).tolist(), str(rule)
        ([1.0, 0.0, 1.0], 'rating==5')
    """

    column: str
    op: Optional[str] = None
    threshold: Optional[float] = None

    @classmethod
    def parse(cls, text: str, columns: Iterable[str]) -> LabelRule:
        """A column name (if it exists) or `"<column><op><number>"`.

        Raises:
            TypeError: `text` is not a string.
            ValueError: neither an existing column nor a rule on an existing column.
        """
        if not isinstance(text, str):
            raise TypeError(f"label={text!r} must be a column name or a rule string such as 'rating>=4'.")
        columns = list(columns)
        if text in columns:
            return cls(text)
        match = _RULE.match(text)
        if match is None or match["column"] not in columns:
            raise ValueError(
                f"label={text!r} is neither a column nor a rule on one; the data has columns {sorted(columns)}. "
                "Pass a 0/1 column or a rule such as 'rating==5' or 'rating>3'."
            )
        return cls(match["column"], match["op"], float(match["threshold"]))

    def apply(self, column: ArrowColumn) -> np.ndarray:
        """float32 labels `(N,)` in {0, 1}.

        Raises:
            ValueError: missing values, or a non-binary column without a rule.
        """
        values = numeric_matrix(column, self.column)[:, 0]  # (N,)
        missing = int(np.isnan(values).sum())
        if missing:
            raise ValueError(f"Label column {self.column!r} has {missing} missing values; drop or fill those rows.")
        if self.op is not None:
            return _OPERATORS[self.op](values, self.threshold).astype(np.float32)
        distinct = np.unique(values)
        if not np.isin(distinct, (0.0, 1.0)).all():
            shown = distinct[:8].tolist()
            raise ValueError(
                f"Label column {self.column!r} is not binary (values {shown}{' ...' if distinct.size > 8 else ''}); "
                f"pass a rule such as label='{self.column}>=4' or label='{self.column}=={shown[-1]:g}'."
            )
        return values.astype(np.float32)

    def __str__(self) -> str:
        return self.column if self.op is None else f"{self.column}{self.op}{self.threshold:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "op": self.op, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> LabelRule:
        return cls(state["column"], state["op"], state["threshold"])
