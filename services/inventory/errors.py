from infra.errors import Conflict, NotFound


class ProductNotFound(NotFound):
    slug = "product-not-found"


class SkuTaken(Conflict):
    slug = "sku-taken"


class InsufficientStock(Conflict):
    slug = "insufficient-stock"
