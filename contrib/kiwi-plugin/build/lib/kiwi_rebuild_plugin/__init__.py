"""kiwi-ng system rebuild, carried out by kiwi-stackbuild."""
