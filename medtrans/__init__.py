"""medtrans: MRI to synthetic CT for clinical research.

Example:
    >>> import medtrans
    >>> medtrans.__version__
    '0.1.0'
"""

from __future__ import annotations

__version__ = "0.1.0"
