"""HTTP: the routes, content types and status codes of ``latentcomm serve`` (``api``) and a small client
(``client``). Neither imports torch or Ray."""
