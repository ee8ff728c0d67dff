"""Column types shared by every service's tables."""

from sqlalchemy import BigInteger, Integer

# 64-bit ids on PostgreSQL; SQLite only autoincrements a column declared INTEGER.
Id = BigInteger().with_variant(Integer(), "sqlite")
