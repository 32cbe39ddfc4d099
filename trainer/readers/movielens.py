"""What the MovieLens releases share: titles with the year in brackets, genres, demographics.

Feature names are the same in every release, so a model reads ``genres``,
``year``, ``title`` of the items and ``age``, ``gender``, ``occupation``,
``zip`` of the users (where a users file exists) whatever release it was
trained on.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainer.dataset import Feature
from trainer.readers.assemble import categorical_feature, numeric_feature, text_feature
from trainer.readers.tables import DataError

GENRES, YEAR, TITLE = "genres", "year", "title"
AGE, GENDER, OCCUPATION, ZIP = "age", "gender", "occupation", "zip"
# Users' zip codes are kept as their first characters: a region, not an address.
ZIP_PREFIX_LENGTH = 2

# "Toy Story (1995)"; the csv releases also have ranges such as "(2006-2007)" for series.
TITLE_YEAR_PATTERN = r"\s*\((?P<year>\d{4})(?:[-" + "\u2013" + r"]\d{4})?\)\s*$"
# "01-Jan-1995" (ml-100k's release date)
DATE_YEAR_PATTERN = r"(?P<year>\d{4})\s*$"


def _year_in(values: pa.Array, pattern: str) -> pa.Array:
    """float32 years found by ``pattern`` (group 'year'); null where none."""
    found = pc.extract_regex(pc.fill_null(values.cast(pa.string()), ""), pattern)
    return pc.struct_field(found, [0]).cast(pa.float32())


def title_features(titles: pa.Array, release_dates: pa.Array | None = None) -> list[Feature]:
    """``year`` (numeric: from the release date, else the title's "(1995)") and
    ``title`` (text: the title's words without the year)."""
    year = _year_in(titles, TITLE_YEAR_PATTERN)
    if release_dates is not None:
        year = pc.coalesce(_year_in(release_dates, DATE_YEAR_PATTERN), year)
    bare = pc.replace_substring_regex(pc.fill_null(titles.cast(pa.string()), ""), TITLE_YEAR_PATTERN, "")
    return [numeric_feature(YEAR, year), text_feature(TITLE, bare)]


def normalized_zip(values: pa.Array) -> pa.Array:
    """Zip code -> its first ZIP_PREFIX_LENGTH characters, upper case, space-padded (as at serving)."""
    trimmed = pc.utf8_trim_whitespace(pc.fill_null(values.cast(pa.string()), ""))
    prefix = pc.utf8_rpad(pc.utf8_slice_codeunits(trimmed, 0, ZIP_PREFIX_LENGTH), ZIP_PREFIX_LENGTH, " ")
    return pc.if_else(pc.equal(trimmed, ""), None, pc.utf8_upper(prefix))


def demographic_features(
    ages: pa.Array, genders: pa.Array, occupations: pa.Array | Feature, zips: pa.Array
) -> tuple[Feature, ...]:
    """``age`` numeric (years; <= 0 = not given), ``gender`` upper-cased, ``occupation``
    lower-cased, ``zip`` a 2-character prefix: the normalisation trainer.features applies
    to a new user's raw features."""
    age = ages.cast(pa.float32())
    age = pc.if_else(pc.greater(age, 0), age, None)
    gender = pc.utf8_upper(pc.utf8_trim_whitespace(genders.cast(pa.string())))
    if not isinstance(occupations, Feature):
        lowered = pc.utf8_lower(pc.utf8_trim_whitespace(occupations.cast(pa.string())))
        occupations = categorical_feature(OCCUPATION, lowered)
    return (
        numeric_feature(AGE, age),
        categorical_feature(GENDER, gender),
        occupations,
        categorical_feature(ZIP, normalized_zip(zips)),
    )


def check_unique(path, ids: np.ndarray, what: str) -> None:
    """Raises DataError when an id is defined twice, naming both (1-based) data rows."""
    uniques, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        duplicate = str(uniques[counts > 1][0])
        rows = np.flatnonzero(ids == duplicate)[:2]
        raise DataError(
            f"{path}: {what} {duplicate!r} is defined twice (data rows {rows[0] + 1} and {rows[1] + 1}); "
            f"each {what} needs exactly one row"
        )
