"""A demo catalog for `make run` (turned off with SEED_DEMO=0). Idempotent by sku."""
from __future__ import annotations

from services.inventory import service
from services.inventory.errors import SkuTaken

DEMO_PRODUCTS = [
    ("DEMO-KB-01", "Mechanical keyboard", 8900, 40),
    ("DEMO-MS-01", "Wireless mouse", 2900, 80),
    ("DEMO-MN-27", "27-inch monitor", 27900, 15),
    ("DEMO-HS-01", "Noise-cancelling headset", 14900, 25),
    ("DEMO-WC-01", "HD webcam", 5900, 30),
    ("DEMO-DK-01", "USB-C dock", 11900, 20),
    ("DEMO-CB-01", "USB-C cable, 2 m", 1200, 200),
    ("DEMO-SD-01", "1 TB SSD", 8900, 35),
    ("DEMO-LP-01", "Laptop stand", 3900, 50),
    ("DEMO-CH-01", "Office chair", 24900, 10),
    ("DEMO-DS-01", "Standing desk", 45900, 8),
    ("DEMO-LA-01", "Desk lamp", 3400, 60),
    ("DEMO-MP-01", "Large mouse pad", 1900, 120),
    ("DEMO-SP-01", "Bluetooth speaker", 6900, 25),
    ("DEMO-PB-01", "Power bank", 4500, 45),
    ("DEMO-HB-01", "USB hub", 2500, 70),
    ("DEMO-TB-01", "Drawing tablet", 9900, 12),
    ("DEMO-MC-01", "USB microphone", 12900, 18),
    ("DEMO-RT-01", "Wi-Fi router", 15900, 14),
    ("DEMO-EB-01", "Wireless earbuds", 7900, 40),
]


def seed_catalog() -> int:
    created = 0
    for sku, name, price, stock in DEMO_PRODUCTS:
        try:
            service.create_product(sku=sku, name=name, price_cents=price, stock=stock, actor="seed",
                                   description=f"Demo product: {name.lower()}.")
            created += 1
        except SkuTaken:
            pass
    return created
