"""The HTTP edge: application factory, app keys, middleware, problem rendering, serving, handlers."""
